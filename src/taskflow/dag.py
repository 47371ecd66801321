"""Workflow graphs: validation before anything is written (pure logic)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


MAX_EDGES = 100_000
"""Dependencies (edges) in one workflow at most: a workflow's edges are read whole (its
graph in the console, ``GET /workflows/{id}/edges``), so their number is bounded here."""


class WorkflowError(ValueError):
    """The graph is not a valid workflow; the message names the offending nodes."""


def check_workflow(edges: Mapping[str, Sequence[str]]) -> list[str]:
    """Validate ``{node: [nodes it runs after]}`` and return the nodes in a topological
    order. Raises :class:`WorkflowError` for an unknown node, a self-edge or a cycle
    (naming the cycle's nodes in order, e.g. ``a -> b -> c -> a``), or more than
    :data:`MAX_EDGES` edges."""
    total = sum(len(after) for after in edges.values())
    if total > MAX_EDGES:
        raise WorkflowError(f"at most {MAX_EDGES} dependencies in a workflow "
                            f"(\"after\" entries of all its jobs), not {total}")
    for node, after in edges.items():
        unknown = [a for a in after if a not in edges]
        if unknown:
            raise WorkflowError(
                f"job {node!r} runs after unknown job(s): {', '.join(map(repr, unknown))}")
        if node in after:
            raise WorkflowError(f"job {node!r} cannot run after itself")
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in edges:
        if state.get(start):
            continue
        # Iterative depth-first search (a chain of thousands must not hit the recursion
        # limit); `path` holds the current chain so a back edge yields the cycle itself.
        path: list[str] = [start]
        iters = [iter(edges[start])]
        state[start] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                done = path.pop()
                iters.pop()
                state[done] = 2
                order.append(done)
            elif state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                # Edges point from a job to what it runs after; show them as runs-before.
                raise WorkflowError("cycle: " + " -> ".join(reversed(cycle)))
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(edges[nxt]))
    return order
