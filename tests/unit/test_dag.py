import pytest

from taskflow.dag import WorkflowError, check_workflow


def test_topological_order_puts_upstreams_first():
    edges = {"d": ["b", "c"], "b": ["a"], "c": ["a"], "a": []}
    order = check_workflow(edges)
    assert sorted(order) == ["a", "b", "c", "d"]
    for node, after in edges.items():
        assert all(order.index(a) < order.index(node) for a in after)


def test_unknown_node_is_named():
    with pytest.raises(WorkflowError, match="job 'load' runs after unknown job\\(s\\): 'extrct'"):
        check_workflow({"extract": [], "load": ["extrct"]})


def test_self_edge_is_named():
    with pytest.raises(WorkflowError, match="job 'a' cannot run after itself"):
        check_workflow({"a": ["a"]})


def test_cycle_is_reported_with_its_nodes_in_order():
    # a runs after c, b after a, c after b: a -> b -> c -> a
    with pytest.raises(WorkflowError) as info:
        check_workflow({"a": ["c"], "b": ["a"], "c": ["b"], "x": []})
    assert str(info.value) == "cycle: a -> b -> c -> a" or \
        str(info.value) in ("cycle: b -> c -> a -> b", "cycle: c -> a -> b -> c")


def test_cycle_off_the_start_node_names_only_the_cycle():
    with pytest.raises(WorkflowError, match="^cycle: b -> c -> b$"):
        check_workflow({"a": [], "b": ["a", "c"], "c": ["b"]})


def test_long_chain_does_not_recurse():
    edges = {f"n{i}": ([f"n{i - 1}"] if i else []) for i in range(5000)}
    assert check_workflow(edges)[:3] == ["n0", "n1", "n2"]


def test_a_workflow_has_at_most_so_many_edges(monkeypatch):
    from taskflow import dag

    monkeypatch.setattr(dag, "MAX_EDGES", 3)
    assert dag.check_workflow({"a": [], "b": ["a"], "c": ["a", "b"]}) == ["a", "b", "c"]
    with pytest.raises(dag.WorkflowError, match="at most 3 dependencies .* not 4"):
        dag.check_workflow({"a": [], "b": ["a"], "c": ["a", "b"], "d": ["c"]})
