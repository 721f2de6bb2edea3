// check-page.mjs: the browser half of test.sh. Checks the HTTP endpoints, then loads the page
// in headless Chromium (playwright-core, the system /usr/bin/chromium), asserts on the rendered
// DOM against the scenario of scenario.sql, changes the data and waits for the page to follow
// (auto-refresh), takes a screenshot and checks the PNG is a real picture.
//
// env: DASHBOARD_URL (the server), SCENARIO_SUFFIX, DASHBOARD_SCREENSHOT, CHROMIUM,
//      PG* (an admin connection, used once to enqueue a run while the page is open)
// Prints one "  ok ..." or "  FAIL ..." line per check; exits 1 if any failed.
import { readFile, stat } from 'node:fs/promises';
import { chromium } from 'playwright-core';
import pg from 'pg';

const base = process.env.DASHBOARD_URL.replace(/\/?$/, '/');
const sfx = process.env.SCENARIO_SUFFIX;
const shot = process.env.DASHBOARD_SCREENSHOT || '/tmp/conveyor-dashboard.png';
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const Q = { emails: `dash_emails_${sfx}`, reports: `dash_reports_${sfx}` };
const T = { send: `dash.send_${sfx}`, bounce: `dash.bounce_${sfx}`, build: `dash.build_${sfx}` };
const SMTP = 'SMTP 421 <try again later> & "soon"';

// what scenario.sql leaves behind
const expectQueues = {
    [Q.emails]: { scheduled: 0, queued: 1, running: 1, retrying: 2, released: 0, succeeded: 2, failed: 1,
                  cancelled: 1, skipped: 0, succeeded_5m: 2, failures_5m: 3, retries_5m: 2, releases_5m: 0 },
    [Q.reports]: { scheduled: 1, queued: 1, running: 0, retrying: 0, released: 2, succeeded: 1, failed: 0,
                   cancelled: 0, skipped: 0, succeeded_5m: 1, failures_5m: 0, retries_5m: 0, releases_5m: 2 },
};
const expectTasks = {
    [T.send]: { queue: Q.emails, waiting: 1, running: 1, retrying: 2, released: 0, succeeded: 2, failed: 0,
                cancelled: 1, retries: 2, releases: 0, attempts_1h: 4, failures_1h: 2 },
    [T.bounce]: { queue: Q.emails, waiting: 0, running: 0, retrying: 0, released: 0, succeeded: 0, failed: 1,
                  cancelled: 0, retries: 0, releases: 0, attempts_1h: 1, failures_1h: 1 },
    [T.build]: { queue: Q.reports, waiting: 2, running: 0, retrying: 0, released: 2, succeeded: 1, failed: 0,
                 cancelled: 0, retries: 0, releases: 2, attempts_1h: 3, failures_1h: 0 },
};
// chart totals over the last hour, per queue: succeeded, retry pressure (retried + failed), releases
const expectChart = {
    [Q.emails]: { succeeded: 2, pressure: 3, retried: 2, failed: 1, released: 0 },
    [Q.reports]: { succeeded: 1, pressure: 0, retried: 0, failed: 0, released: 2 },
};

let passed = 0, failed = 0;
let plotBox = null;   // where the chart's bars are in the screenshot
function check(ok, what, detail) {
    if (ok) { passed += 1; console.log(`  ok    ${what}`); }
    else { failed += 1; console.log(`  FAIL  ${what}${detail === undefined ? '' : `: ${detail}`}`); }
    return ok;
}
const eq = (actual, expected, what) =>
    check(JSON.stringify(actual) === JSON.stringify(expected), what,
          `expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);

// ---- HTTP endpoints -------------------------------------------------------------------------
async function checkHttp() {
    let r = await fetch(`${base}healthz`);
    eq([r.status, await r.text()], [200, 'ok\n'], 'GET /healthz answers ok');

    r = await fetch(`${base}metrics`);
    const metrics = await r.text();
    check(r.status === 200 && /^text\/plain/.test(r.headers.get('content-type')), 'GET /metrics is text/plain',
          `${r.status} ${r.headers.get('content-type')}`);
    for (const line of [`conveyor_runs{queue="${Q.emails}",status="retrying"} 2`,
                        `conveyor_runs{queue="${Q.reports}",status="released"} 2`,
                        `conveyor_attempts_5m{queue="${Q.emails}",kind="retried"} 2`,
                        `conveyor_attempts_5m{queue="${Q.reports}",kind="released"} 2`]) {
        check(metrics.split('\n').includes(line), `/metrics has ${line}`);
    }

    r = await fetch(`${base}api/dashboard`);
    const d = await r.json();
    check(r.status === 200 && Array.isArray(d.queues) && Array.isArray(d.tasks) && Array.isArray(d.failures)
          && Array.isArray(d.throughput), 'GET /api/dashboard returns the four views');
    check(d.queues.some((q) => q.queue === Q.emails) && d.queues.some((q) => q.queue === Q.reports),
          'the JSON has both scenario queues');

    r = await fetch(`${base}api/dashboard?queue=${encodeURIComponent(Q.emails)}`);
    const f = await r.json();
    eq([f.failures_total, f.failures.length, f.failures.every((x) => x.queue === Q.emails)], [3, 3, true],
       'GET /api/dashboard?queue= returns that queue\'s failures only');

    r = await fetch(`${base}api/dashboard`, { method: 'POST' });
    eq(r.status, 405, 'POST is refused (read-only)');
    r = await fetch(`${base}no-such-page`);
    eq(r.status, 404, 'an unknown path is 404');
}

// ---- the page -------------------------------------------------------------------------------
const cellValue = (page, table, key, keyValue, col) =>
    page.$eval(`#${table} tbody tr[data-${key}="${keyValue}"] [data-col="${col}"]`,
               (td) => (td.dataset.value !== undefined ? Number(td.dataset.value) : td.textContent.trim()));

async function rowValues(page, table, key, keyValue, cols) {
    const out = {};
    for (const c of cols) out[c] = await cellValue(page, table, key, keyValue, c);
    return out;
}

// pick a queue in the page-wide filter and wait until the page shows that queue's snapshot
async function filterQueue(page, queue) {
    await page.selectOption('#queue-filter', queue);
    await page.waitForSelector(`body[data-shown-queue="${queue}"]`, { timeout: 10_000 });
}
const chartTotals = (page) => page.$$eval('#legend [data-total]', (els) =>
    Object.fromEntries(els.map((e) => [e.dataset.total, Number(e.textContent.replace(/,/g, ''))])));

async function checkPage(browser) {
    const page = await browser.newPage({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 });
    const errors = [];
    page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
    page.on('requestfailed', (r) => errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));

    await page.goto(`${base}?refresh=1`, { waitUntil: 'load' });
    await page.waitForSelector(`#queues tbody tr[data-queue="${Q.emails}"]`, { timeout: 20_000 });
    eq(await page.title(), 'pg_conveyor dashboard', 'the page loads');
    eq(await page.$eval('#updated', (e) => e.dataset.state), 'ok', 'the page reports a successful refresh');

    // queues table
    for (const [queue, want] of Object.entries(expectQueues)) {
        eq(await cellValue(page, 'queues', 'queue', queue, 'queue'), queue, `queue row ${queue} shows its name`);
        eq(await rowValues(page, 'queues', 'queue', queue, Object.keys(want)), want, `queue ${queue}: counts`);
        const lag = await cellValue(page, 'queues', 'queue', queue, 'lag_seconds');
        check(lag > 0 && lag < 600, `queue ${queue}: lag of its queued run shown (${lag} s)`);
    }
    // what a person reads, not only the data attributes
    const emailsText = await page.$eval(`#queues tr[data-queue="${Q.emails}"]`, (tr) =>
        [...tr.cells].map((c) => c.textContent.trim()));
    eq(emailsText.slice(1, 10), ['0', '1', '1', '2', '0', '2', '1', '1', '0'],
       `queue ${Q.emails}: the visible status cells`);

    // tasks table
    for (const [task, want] of Object.entries(expectTasks)) {
        eq(await rowValues(page, 'tasks', 'task', task, Object.keys(want)), want, `task ${task}: counts`);
    }

    // per queue (page-wide filter): chart totals and lanes, tasks, failures
    const failureRows = () => page.$$eval('#failures tbody tr[data-run-id]', (trs) => trs.map((tr) => ({
        queue: tr.querySelector('[data-col="queue"]').textContent,
        task: tr.querySelector('[data-col="task"]').textContent,
        code: tr.querySelector('[data-col="code"]').textContent,
        message: tr.querySelector('[data-field="message"]').textContent,
        run: tr.querySelector('[data-col="run_status"]').textContent,
        retry_in: tr.querySelector('[data-col="retry_in"]').textContent,
    })));
    const sorted = (xs) => xs.map((f) => JSON.stringify(f)).sort();
    for (const [queue, want] of Object.entries(expectChart)) {
        await filterQueue(page, queue);
        eq(await page.$$eval('#queues tbody tr[data-queue]', (trs) => trs.map((tr) => tr.dataset.queue)), [queue],
           `filter ${queue}: the queues table shows that queue only`);
        eq(await chartTotals(page), want, `filter ${queue}: chart totals of the last hour`);
        const bars = await page.$$eval('#chart g[data-lane]', (gs) =>
            Object.fromEntries(gs.map((g) => [g.dataset.lane, g.querySelectorAll('rect').length - 1])));
        eq({ succeeded: bars.succeeded > 0, pressure: bars['retry pressure'] > 0, releases: bars.releases > 0 },
           { succeeded: want.succeeded > 0, pressure: want.pressure > 0, releases: want.released > 0 },
           `filter ${queue}: chart lanes have bars exactly where the queue has attempts`);
    }
    await filterQueue(page, Q.emails);
    eq(sorted(await failureRows()), sorted([
        { queue: Q.emails, task: T.bounce, code: 'task_failed', message: 'mailbox does not exist', run: 'failed', retry_in: '–' },
        { queue: Q.emails, task: T.send, code: 'task_failed', message: SMTP, run: 'retrying', retry_in: '00:10:00' },
        { queue: Q.emails, task: T.send, code: 'task_failed', message: SMTP, run: 'retrying', retry_in: '00:10:00' },
    ]), `filter ${Q.emails}: recent failures show code, message, run status and retry delay of its 3 failed attempts`);
    eq(await page.$$eval('#failures try', (xs) => xs.length), 0, 'failure messages are shown as text, not HTML');
    eq(await page.$$eval('#tasks tbody tr[data-task]', (trs) => trs.map((tr) => tr.dataset.task).sort()),
       [T.bounce, T.send].sort(), `filter ${Q.emails}: the tasks table shows its two tasks`);
    await filterQueue(page, Q.reports);
    eq(await failureRows(), [], `filter ${Q.reports}: no failures (releases are not failures)`);
    await filterQueue(page, '');

    // auto-refresh: a run enqueued now shows up without reloading the page
    const before = Number(await page.$eval('#updated', (e) => e.dataset.count));
    const admin = new pg.Client();
    await admin.connect();
    await admin.query('select conveyor.enqueue($1, $2)', [T.send, { to: 'late@example.com' }]);
    await admin.end();
    try {
        await page.waitForFunction((q) => {
            const td = document.querySelector(`#queues tr[data-queue="${q}"] td[data-col="queued"]`);
            return td && td.dataset.value === '2';
        }, Q.emails, { timeout: 15_000 });
        check(true, 'auto-refresh: a run enqueued while the page is open appears (queued 1 -> 2)');
    } catch (e) {
        check(false, 'auto-refresh: a run enqueued while the page is open appears (queued 1 -> 2)', e.message);
    }
    const after = Number(await page.$eval('#updated', (e) => e.dataset.count));
    check(after > before, `the page refreshed by itself (${before} -> ${after} refreshes)`);

    // screenshot of the whole page, chart over all queues
    await page.waitForTimeout(300);
    plotBox = await page.$eval('#chart svg', (svg) => {
        const r = svg.getBoundingClientRect();   // the bars start 150 px in, after the lane labels
        return { x: Math.round(r.x + scrollX + 150), y: Math.round(r.y + scrollY),
                 w: Math.round(r.width - 150), h: Math.round(r.height) };
    });
    await page.screenshot({ path: shot, fullPage: true });
    eq(errors, [], 'no page errors, console errors or failed requests');
    await page.close();
}

// ---- the screenshot is a real picture ---------------------------------------------------------
async function checkPng(browser) {
    const buf = await readFile(shot);
    const size = (await stat(shot)).size;
    check(buf.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])),
          `${shot} is a PNG`);
    const width = buf.readUInt32BE(16), height = buf.readUInt32BE(20);
    check(width >= 1200 && height >= 800, `screenshot is ${width}x${height} (at least 1200x800)`);
    check(size > 30_000, `screenshot is ${Math.round(size / 1024)} KiB (more than 30 KiB)`);

    // decode it in the browser and look at the pixels
    const page = await browser.newPage();
    const stats = await page.evaluate(async ([src, box]) => {
        const img = new Image();
        img.src = src;
        await img.decode();
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d');
        ctx.drawImage(img, 0, 0);
        const px = ctx.getImageData(0, 0, c.width, c.height).data;
        const counts = new Map();   // colours, 4 bits a channel
        const exact = new Map();    // colours, exactly
        const near = (r, g, b, [R, G, B]) => Math.abs(r - R) + Math.abs(g - G) + Math.abs(b - B) < 40;
        const series = { succeeded: [31, 157, 85], retried: [232, 89, 12], failed: [201, 42, 42], released: [59, 111, 216] };
        const hits = { succeeded: 0, retried: 0, failed: 0, released: 0 };
        for (let i = 0; i < px.length; i += 4) {
            const r = px[i], g = px[i + 1], b = px[i + 2];
            const key = (r >> 4) << 8 | (g >> 4) << 4 | (b >> 4);
            counts.set(key, (counts.get(key) || 0) + 1);
            const rgb = r << 16 | g << 8 | b;
            exact.set(rgb, (exact.get(rgb) || 0) + 1);
            const x = (i / 4) % c.width, y = Math.floor(i / 4 / c.width);
            if (x < box.x || x >= box.x + box.w || y < box.y || y >= box.y + box.h) continue;
            for (const [k, rgb] of Object.entries(series)) if (near(r, g, b, rgb)) hits[k] += 1;
        }
        const top = Math.max(...exact.values());
        return { colors: counts.size, dominant: top / (px.length / 4), hits };
    }, [`data:image/png;base64,${buf.toString('base64')}`, plotBox]);
    await page.close();
    check(stats.colors >= 16, `screenshot has ${stats.colors} distinct colours, 4 bits a channel (at least 16)`);
    check(stats.dominant < 0.9, `no single colour covers the screenshot (largest ${(stats.dominant * 100).toFixed(1)}%)`);
    check(Object.values(stats.hits).every((n) => n >= 20),
          `the chart's bars are drawn in the screenshot, all four series colours (${JSON.stringify(stats.hits)} px)`,
          JSON.stringify(stats.hits));
}

const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
try {
    await checkHttp();
    await checkPage(browser);
    await checkPng(browser);
} catch (e) {
    check(false, 'the browser checks ran to the end', e.stack || e.message);
} finally {
    await browser.close();
}
console.log(`  (browser checks: ${passed} ok, ${failed} FAIL)`);
process.exit(failed ? 1 : 0);
