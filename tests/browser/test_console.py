"""The web console in Chromium against a live API and worker: sign in, watch a queue's
figures move, filter jobs, retry a failed job, watch a workflow's graph turn green,
redrive dead letters, and see that another tenant's token shows none of it.

Every wait is on a condition (Playwright's expect polls); a screenshot of each page is
saved (see conftest.py)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Page, expect

from taskflow.api.scopes import READ
from tests.e2e.api_stack import Client

pytestmark = pytest.mark.slow

WAIT_MS = 20_000


@pytest.fixture
def api(live, http, tenant) -> Client:
    return Client(http, live.url, live.token(tenant))


class Watched:
    """A page whose console errors and uncaught exceptions (a CSP violation is one) are
    collected, so each test can assert there were none."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))


@pytest.fixture
async def page(browser) -> AsyncIterator[Watched]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    watched = Watched(await context.new_page())
    expect.set_options(timeout=WAIT_MS)
    try:
        yield watched
    finally:
        await context.close()
    # The browser logs every 4xx answer ("Failed to load resource"); the console shows
    # those as messages, which the tests check. Anything else (a script error, a CSP
    # violation: "Refused to ...") fails the test.
    assert not [e for e in watched.errors if not _api_answer(e)], watched.errors


def _api_answer(text: str) -> bool:
    return re.match(r"Failed to load resource: the server responded with a status of 4\d\d",
                    text) is not None


async def sign_in(page: Page, url: str, bearer: str) -> None:
    """The link ``taskflow dev`` prints: the token in the fragment."""
    await page.goto(f"{url}/ui/#token={bearer}")
    await expect(page.locator("#who [data-tenant]")).to_be_visible()


async def submit(api: Client, **spec) -> str:
    reply = await api.post("/tasks", json=spec)
    assert reply.status == 201, reply
    return reply.body["id"]


def figure(page: Page, queue: str, name: str):
    return page.locator(f'tr[data-queue="{queue}"] [data-figure="{name}"]')


async def test_sign_in_link_keeps_the_token_out_of_the_url_and_the_csp_holds(
        live, page, http, tenant, shots):
    async with http.get(live.url + "/", allow_redirects=False) as resp:
        assert resp.status in (301, 302, 307, 308) and resp.headers["location"] == "/ui/"
    async with http.get(live.url + "/ui/") as resp:
        csp = resp.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "style-src 'self'" in csp
    p = page.page
    await p.goto(live.url + "/")
    await expect(p.get_by_role("heading", name="Sign in")).to_be_visible()
    await p.screenshot(path=shots / "signin.png", full_page=True)

    # A pasted token that the API refuses is a message, and is not kept.
    await p.fill("#token", "not-a-token")
    await p.get_by_role("button", name="Sign in").click()
    await expect(p.get_by_role("alert")).to_contain_text("refused the token")
    assert await p.evaluate("sessionStorage.length") == 0

    bearer = live.token(tenant)
    await sign_in(p, live.url, bearer)
    await expect(p.get_by_role("heading", name=re.compile("Overview"))).to_be_visible()
    assert "token" not in p.url and p.url.endswith("#/overview")
    assert await p.evaluate("sessionStorage.getItem('taskflow.token')") == bearer
    assert await p.evaluate("localStorage.length") == 0
    await expect(p.locator("#who")).to_contain_text(f"tenant {tenant}")


async def test_overview_figures_follow_submitted_jobs_without_a_reload(live, page, api, shots):
    p = page.page
    await sign_in(p, live.url, api.bearer)
    await expect(figure(p, "parked", "ready")).to_have_text("0")
    marker = await p.evaluate("window.performance.timeOrigin")
    for _ in range(3):
        await submit(api, task="noop", queue="parked")
    await expect(figure(p, "parked", "ready")).to_have_text("3")
    await expect(figure(p, "parked", "oldest_ready_age")).not_to_have_text("—")
    # Failures of the last hour show too (the worker serves default).
    await submit(api, task="fail", max_attempts=1)
    await expect(figure(p, "default", "failed_last_hour")).to_have_text("1")
    await expect(figure(p, "default", "ended")).to_contain_text("1 failed")
    await expect(p.locator("tr[data-worker]")).to_have_count(1)
    assert await p.evaluate("window.performance.timeOrigin") == marker  # no reload
    await p.screenshot(path=shots / "overview.png", full_page=True)

    # A phone's width: nothing wider than the screen but the tables' own scroll boxes.
    await p.set_viewport_size({"width": 390, "height": 844})
    await expect(figure(p, "parked", "ready")).to_have_text("3")
    overflow = await p.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, overflow
    await p.screenshot(path=shots / "overview-phone.png", full_page=True)


async def test_job_list_filters_are_in_the_url(live, page, api, shots):
    ok = [await submit(api, task="echo", labels={"team": "red"}, payload={"n": i})
          for i in range(2)]
    bad = await submit(api, task="fail", max_attempts=1, labels={"team": "blue"})
    for job in ok:
        await api.wait_state(job, {"succeeded"})
    await api.wait_state(bad, {"failed"})
    p = page.page
    await sign_in(p, live.url, api.bearer)
    await p.get_by_role("link", name="Jobs", exact=True).click()
    await expect(p.locator("tr[data-job]")).to_have_count(3)
    await p.get_by_role("checkbox", name="failed").check()
    await p.get_by_role("button", name="Apply").click()
    await expect(p.locator("tr[data-job]")).to_have_count(1)
    await expect(p.locator(f'tr[data-job="{bad}"] [data-state]')).to_have_text("failed")
    assert "state=failed" in p.url
    # Any of several states: the key repeats in the URL, and the boxes stay ticked.
    await p.get_by_role("checkbox", name="succeeded").check()
    await p.get_by_role("button", name="Apply").click()
    await expect(p.locator("tr[data-job]")).to_have_count(3)
    assert "state=succeeded" in p.url and "state=failed" in p.url
    await expect(p.get_by_role("checkbox", name="failed")).to_be_checked()
    # The URL is the view: opened afresh, it shows the same filtered list.
    await p.goto(f"{live.url}/ui/#/jobs?label=team%3Dred")
    await expect(p.locator("tr[data-job]")).to_have_count(2)
    await expect(p.locator("#f-label")).to_have_value("team=red")
    await p.screenshot(path=shots / "jobs.png", full_page=True)
    # Cursor paging, newest first, the cursor in the URL too.
    await p.goto(f"{live.url}/ui/#/jobs?limit=2")
    await expect(p.locator("tr[data-job]")).to_have_count(2)
    await expect(p.locator(f'tr[data-job="{bad}"]')).to_be_visible()  # the newest
    await p.get_by_role("button", name="Older →").click()
    await expect(p.locator("tr[data-job]")).to_have_count(1)
    await expect(p.locator(f'tr[data-job="{ok[0]}"]')).to_be_visible()
    assert "cursor=" in p.url
    await p.get_by_role("button", name="← Newest").click()
    await expect(p.locator(f'tr[data-job="{bad}"]')).to_be_visible()
    await p.goto(f"{live.url}/ui/#/jobs?task=nothing-like-this")
    await expect(p.locator("[data-empty]")).to_contain_text("No job matches these filters")
    # Bad input is the API's message, not a blank page.
    await p.goto(f"{live.url}/ui/#/jobs?created_after=yesterday")
    await expect(p.get_by_role("alert")).to_contain_text("created_after")


async def test_a_failed_job_opens_and_is_retried_after_confirmation(live, page, api, shots):
    big = {"rows": [{"i": i, "text": "x" * 40} for i in range(600)]}  # ~30 KB: truncated
    job = await submit(api, task="fail", max_attempts=1, payload={"times": 1})
    other = await submit(api, task="echo", payload=big)
    await api.wait_state(job, {"failed"})
    await api.wait_state(other, {"succeeded"})
    p = page.page
    await sign_in(p, live.url, api.bearer)
    await p.goto(f"{live.url}/ui/#/jobs?state=failed")
    await p.locator(f'tr[data-job="{job}"] a').click()
    await expect(p.get_by_role("heading", level=1)).to_contain_text("fail")
    await expect(p.locator("[data-error]")).to_contain_text("failed on purpose")
    await expect(p.locator("li[data-attempt]")).to_have_count(1)
    # The payload is pretty JSON that folds away.
    payload = p.locator("details.json").first
    await expect(payload).to_have_attribute("open", "")
    await expect(payload).to_contain_text('"times": 1')
    await payload.locator("summary").first.click()
    await expect(payload).not_to_have_attribute("open", "")
    await p.screenshot(path=shots / "job-failed.png", full_page=True)

    await p.get_by_role("button", name="Retry…").click()
    dialog = p.get_by_role("dialog")
    await expect(dialog).to_contain_text("Run this job again?")
    await dialog.get_by_role("button", name="Cancel").click()  # declined: nothing happens
    await expect(dialog).to_have_count(0)
    assert (await api.get(f"/tasks/{job}")).body["state"] == "failed"
    await p.get_by_role("button", name="Retry…").click()
    await p.get_by_role("dialog").get_by_role("button", name="Retry").click()
    await expect(p.get_by_role("status").filter(has_text="Retried")).to_be_visible()
    # The page follows the job: its second attempt succeeds (payload times=1).
    await expect(p.locator("h1 [data-state]")).to_have_text("succeeded")
    await expect(p.locator("li[data-attempt]")).to_have_count(2)
    await p.screenshot(path=shots / "job-retried.png", full_page=True)

    await p.goto(f"{live.url}/ui/#/jobs/{other}")
    truncated = p.locator("[data-truncated]")  # echo: the result is the payload
    await expect(truncated).to_have_count(2)
    await expect(truncated.first).to_contain_text("Download the whole payload")
    await expect(truncated.first.get_by_role("link")).to_have_attribute("download", "payload.json")


async def test_a_read_only_token_gets_no_write_buttons(live, page, api, tenant):
    job = await submit(api, task="fail", max_attempts=1)
    await api.wait_state(job, {"failed"})
    p = page.page
    await sign_in(p, live.url, live.token(tenant, READ))
    await p.goto(f"{live.url}/ui/#/jobs/{job}")
    await expect(p.locator("[data-error]")).to_be_visible()
    await expect(p.get_by_text("Cancel and retry need a token with tasks:write")).to_be_visible()
    await expect(p.locator("[data-action]")).to_have_count(0)
    await p.goto(f"{live.url}/ui/#/dead-letters")
    await expect(p.get_by_text("Redriving needs a token with tasks:write")).to_be_visible()


async def test_a_workflow_graph_turns_green_live(live, page, api, shots):
    # 120 jobs in layers: a slow root, 100 in the middle, a fan-in of 19 at the end.
    jobs = [{"name": "root", "task": "sleep", "payload": {"seconds": 2}}]
    jobs += [{"name": f"mid-{i:03}", "task": "noop", "after": ["root"]} for i in range(100)]
    jobs += [{"name": f"end-{i:02}", "task": "noop",
              "after": [f"mid-{j:03}" for j in range(i * 5, i * 5 + 5)]} for i in range(19)]
    reply = await api.post("/workflows", json={"name": "etl-nightly", "jobs": jobs})
    assert reply.status == 201, reply
    wf = reply.body["id"]
    p = page.page
    streams = []
    p.on("request", lambda r: r.url.endswith(f"/workflows/{wf}/events") and streams.append(r))
    await sign_in(p, live.url, api.bearer)
    await p.get_by_role("link", name="Workflows").click()
    await p.get_by_role("link", name="etl-nightly").click()
    nodes = p.locator("a[data-node]")
    await expect(nodes).to_have_count(120)
    await expect(p.locator('a[data-node="root"]')).not_to_have_attribute("data-state", "succeeded")
    assert await p.locator("path.edge").count() == 100 + 19 * 5
    await p.screenshot(path=shots / "workflow-running.png")
    # Live: every node turns green without a reload.
    await expect(p.locator('a[data-node][data-state="succeeded"]')).to_have_count(120)
    await expect(p.get_by_role("heading", level=1).locator("[data-state]")).to_have_text("succeeded")
    # Through the event stream, with the bearer header (not polling after a failure).
    assert streams and streams[0].headers["authorization"] == f"Bearer {api.bearer}"
    assert await p.get_by_role("alert").count() == 0
    # Zoom and pan change the view; a click on a node opens its job.
    scene = p.locator(".graph svg > g")
    before = await scene.get_attribute("transform")
    await p.get_by_role("button", name="Zoom in").click()
    assert await scene.get_attribute("transform") != before
    await p.screenshot(path=shots / "workflow-done.png")
    # Nodes are links: from the keyboard too (a big graph puts this one off screen).
    await p.locator('a[data-node="end-00"]').focus()
    await p.keyboard.press("Enter")
    await expect(p.get_by_role("heading", level=1)).to_contain_text("noop")
    assert f"#/jobs/{reply.body['jobs']['end-00']}" in p.url
    await p.go_back()
    await p.goto(f"{live.url}/ui/#/workflows")
    await expect(p.locator(f'tr[data-workflow="{wf}"] [data-state]')).to_have_text("succeeded")
    await p.screenshot(path=shots / "workflows.png", full_page=True)


async def test_dead_letters_are_counted_then_redriven(live, page, api, shots):
    queue_jobs = [await submit(api, task="fail", max_attempts=1,
                               payload={"times": 1, "message": "bad input"}) for _ in range(2)]
    await submit(api, task="fail", max_attempts=1, payload={"message": "other"})
    for job in queue_jobs:
        await api.wait_state(job, {"failed"})
    p = page.page
    await sign_in(p, live.url, api.bearer)
    await p.get_by_role("link", name="Dead letters").click()
    await expect(p.locator("tr[data-job]")).to_have_count(3)
    await p.fill("#f-error", "bad input")
    await p.get_by_role("button", name="Apply").click()
    await expect(p.locator("tr[data-job]")).to_have_count(2)
    await p.get_by_role("button", name="Count matching").click()
    await expect(p.locator("[data-matched]")).to_have_attribute("data-matched", "2")
    await p.screenshot(path=shots / "dead-letters.png", full_page=True)
    await p.get_by_role("button", name="Redrive 2…").click()
    await p.get_by_role("dialog").get_by_role("button", name="Redrive").click()
    await expect(p.locator("[data-redriven]")).to_have_attribute("data-redriven", "2")
    for job in queue_jobs:  # back to work, and this time they succeed (times=1)
        await api.wait_state(job, {"succeeded"})
    await p.reload()
    await expect(p.locator("[data-empty]")).to_contain_text("No dead letter matches")


async def test_another_tenant_sees_none_of_it(live, page, api, shots):
    job = await submit(api, task="fail", max_attempts=1)
    await submit(api, task="noop", queue="parked")
    reply = await api.post("/workflows", json={"name": "private", "jobs": [
        {"name": "a", "task": "noop"}]})
    await api.wait_state(job, {"failed"})
    p = page.page
    stranger = live.token(f"s-{uuid.uuid4().hex[:8]}")
    await sign_in(p, live.url, stranger)
    await expect(figure(p, "parked", "ready")).to_have_text("0")
    await expect(figure(p, "default", "failed_last_hour")).to_have_text("0")
    for path, text in (("jobs", "No jobs yet"), ("workflows", "No workflows yet"),
                       ("dead-letters", "No dead letters")):
        await p.goto(f"{live.url}/ui/#/{path}")
        await expect(p.locator("[data-empty]")).to_contain_text(text)
        await p.screenshot(path=shots / f"{path}-other-tenant.png", full_page=True)
    await p.goto(f"{live.url}/ui/#/jobs/{job}")
    await expect(p.get_by_role("alert")).to_contain_text("404")
    await p.goto(f"{live.url}/ui/#/workflows/{reply.body['id']}")
    await expect(p.get_by_role("alert")).to_contain_text("404")
    # An admin sees the tenant's jobs, and narrows to that tenant with the filter.
    await sign_in(p, live.url, live.admin())
    await p.goto(f"{live.url}/ui/#/jobs?tenant={api_tenant(api)}")
    await expect(p.locator(f'tr[data-job="{job}"]')).to_be_visible()


def api_tenant(api: Client) -> str:
    import jwt

    return jwt.decode(api.bearer, options={"verify_signature": False})["tenant"]


async def test_keyboard_reaches_every_section(live, page, api):
    p = page.page
    await sign_in(p, live.url, api.bearer)
    await p.keyboard.press("Tab")  # the skip link first
    await expect(p.get_by_role("link", name="Skip to content")).to_be_focused()
    for _ in range(3):  # brand, Overview, Jobs
        await p.keyboard.press("Tab")
    await expect(p.get_by_role("link", name="Jobs", exact=True)).to_be_focused()
    await p.keyboard.press("Enter")
    await expect(p.get_by_role("heading", name="Jobs")).to_be_visible()
    await expect(p.get_by_role("link", name="Jobs", exact=True)).to_have_attribute(
        "aria-current", "page")


async def test_a_waiting_job_is_cancelled_after_confirmation(live, page, api, shots):
    job = await submit(api, task="noop", queue="parked")  # nobody serves parked: it waits
    p = page.page
    await sign_in(p, live.url, api.bearer)
    await p.goto(f"{live.url}/ui/#/jobs/{job}")
    await expect(p.locator("h1 [data-state]")).to_have_text("queued")
    await expect(p.get_by_role("button", name="Retry…")).to_have_count(0)
    await p.get_by_role("button", name="Cancel…").click()
    await p.get_by_role("dialog").get_by_role("button", name="Cancel job").click()
    await expect(p.locator("h1 [data-state]")).to_have_text("cancelled")
    assert (await api.get(f"/tasks/{job}")).body["state"] == "cancelled"
    await expect(p.get_by_role("button", name="Retry…")).to_be_visible()
    await p.set_viewport_size({"width": 390, "height": 844})
    await p.screenshot(path=shots / "job-cancelled-phone.png", full_page=True)


async def test_a_workflow_too_large_to_draw_is_a_table(live, page, api):
    jobs = [{"name": f"j{i:04}", "task": "noop", "queue": "parked"} for i in range(2001)]
    reply = await api.post("/workflows", json={"name": "huge", "jobs": jobs})
    assert reply.status == 201, reply
    p = page.page
    await sign_in(p, live.url, api.bearer)
    await p.goto(f"{live.url}/ui/#/workflows/{reply.body['id']}")
    await expect(p.get_by_role("status")).to_contain_text("2001 jobs: too many to draw here")
    await expect(p.locator(".graph")).to_have_count(0)
    await expect(p.locator("details[open] tbody tr")).to_have_count(2000)
    await expect(p.get_by_text("The first 2000 of 2001 jobs.")).to_be_visible()
