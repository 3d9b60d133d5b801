// The two-centre view in Debian's Chromium (tests/cluster.rs starts sh-01 with the peers
// sz-01, which runs, and sz-02, which does not, and passes sh-01's address in SIPEDGE_URL).
// What the page shows for each node selection is checked against the API's own answer.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.SIPEDGE_URL;
const SHOTS = process.env.SIPEDGE_SCREENSHOTS || 'target/ui-screenshots';
if (!BASE) throw new Error('SIPEDGE_URL is not set: run these tests through `cargo test --test cluster`');

let browser;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.SIPEDGE_CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  });
});

after(async () => {
  await browser?.close();
});

async function api(pathAndQuery) {
  const response = await fetch(`${BASE}${pathAndQuery}`);
  assert.equal(response.status, 200, `${pathAndQuery}: ${response.status}`);
  return response.json();
}

async function open(hash, lang = 'en') {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 }, locale: 'zh-CN', timezoneId: 'UTC' });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (err) => problems.push(`uncaught: ${err.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`${message.text()} @ ${message.location()?.url || ''}`);
  });
  await page.goto(`${BASE}/?lang=${lang}${hash}`);
  await page.waitForSelector('#node-picker:not([hidden])');
  return {
    page,
    async done() {
      await context.close();
      assert.deepEqual(problems, [], 'the browser console has errors');
    },
  };
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
}

const digits = (text) => Number(String(text).replace(/[^\d]/g, ''));

/** Waits until the records on screen are those of the current selection (`node` cells). */
async function waitForRows(page, test) {
  await page.waitForSelector('#query-results[aria-busy="false"] .bar-chart');
  await page.waitForFunction(test);
}

describe('cluster view', () => {
  test('the selector offers this node, the whole cluster and each peer', async () => {
    const { page, done } = await open('#/query');
    const options = await page.$$eval('#node-select option', (os) => os.map((o) => [o.value, o.textContent]));
    assert.deepEqual(options, [['local', 'This node (sh-01)'], ['cluster', 'Whole cluster'], ['sz-01', 'sz-01'], ['sz-02', 'sz-02']]);
    assert.equal(await page.isVisible('#cluster-status'), false, 'nothing to say for this node alone');
    assert.equal(await page.isVisible('#records th.node-col'), false);
    await done();
  });

  test("the whole cluster's records, totals and chart, with the unavailable node marked", async () => {
    const { page, done } = await open('#/query');
    await waitForRows(page, () => document.querySelectorAll('#record-rows tr').length > 0);
    const csvHref = await page.getAttribute('#q-csv', 'href');
    const qs = csvHref.slice(csvHref.indexOf('?'));
    await page.selectOption('#node-select', 'cluster');
    await waitForRows(page, () => [...document.querySelectorAll('#record-rows tr')].some((r) => r.dataset.node === 'sz-01'));

    const merged = await api(`/api/cdrs${qs}&limit=100&scope=cluster`);
    const stats = await api(`/api/stats${qs}&scope=cluster`);
    assert.deepEqual(merged.unavailable, ['sz-02']);
    const rows = await page.$$eval('#record-rows tr', (rs) => rs.map((r) => [r.dataset.id, r.querySelector('td.node-col').textContent]));
    assert.deepEqual(rows, merged.items.map((c) => [c.id, c.node]));
    assert.deepEqual([...new Set(rows.map((r) => r[1]))].sort(), ['sh-01', 'sz-01']);
    assert.equal(await page.isVisible('#records th.node-col'), true, 'a node column');
    assert.equal(digits(await page.textContent('[data-total="all.calls"]')), stats.totals.all.calls);
    const bars = await page.$$eval('.bar-chart rect.bar', (rs) => rs.map((r) => Number(r.dataset.talk)));
    assert.deepEqual(bars, stats.buckets.flatMap((b) => [b.audio.talk_s, b.video.talk_s]));

    // Which nodes answered, and the one that did not, stand out above the results.
    const strip = page.locator('#cluster-status');
    assert.equal(await strip.isVisible(), true);
    assert.match(await strip.getAttribute('class'), /has-unavailable/);
    assert.deepEqual(await page.$$eval('#cluster-status .node-chip.ok', (cs) => cs.map((c) => c.textContent)), ['sh-01', 'sz-01']);
    assert.deepEqual(await page.$$eval('#cluster-status .node-chip.bad', (cs) => cs.map((c) => c.textContent)), ['sz-02']);
    assert.match(await strip.textContent(), /Unavailable/);
    // The export covers one node: it is off, and says why.
    assert.equal(await page.isVisible('#q-csv'), false);
    assert.equal(await page.isVisible('#q-csv-cluster'), true);
    await shot(page, 'cluster-query');

    // In Chinese too.
    await page.click('#lang-switch');
    assert.match(await strip.textContent(), /不可用节点/);
    assert.equal(await page.textContent('#node-select option[value="cluster"]'), '整个集群');
    await shot(page, 'cluster-query-zh');
    await done();
  });

  test("one peer's records, and the log of one of them, read through this node", async () => {
    const { page, done } = await open('#/query');
    await waitForRows(page, () => document.querySelectorAll('#record-rows tr').length > 0);
    await page.selectOption('#node-select', 'sz-01');
    await waitForRows(page, () => {
      const rows = [...document.querySelectorAll('#record-rows tr')];
      return rows.length > 0 && rows.every((r) => r.dataset.node === 'sz-01');
    });
    assert.deepEqual(await page.$$eval('#cluster-status .node-chip', (cs) => cs.map((c) => c.textContent)), ['sz-01']);
    const first = await page.getAttribute('#record-rows tr', 'data-id');
    const cdr = await api(`/api/cdrs/${first}?node=sz-01`);
    await page.click('#record-rows tr:first-child a');
    await page.waitForSelector('#log-summary .call-head');
    assert.match(page.url(), /node=sz-01/);
    assert.equal(await page.textContent('#log-summary .call-head .party'), cdr.caller);
    await done();
  });

  test('alarms and processes of the cluster, each row with its node; the choice is remembered', async () => {
    const { page, done } = await open('#/monitor');
    await page.selectOption('#node-select', 'cluster');
    await page.waitForFunction(() => [...document.querySelectorAll('#alarm-rows tr')].some((r) => r.dataset.node === 'sz-01'));
    const alarms = await api('/api/alarms?limit=500&scope=cluster');
    const nodes = await page.$$eval('#alarm-rows tr td.node-col', (cs) => cs.map((c) => c.textContent));
    assert.deepEqual(nodes, alarms.items.map((a) => a.node));
    assert.ok(nodes.includes('sh-01') && nodes.includes('sz-01'), nodes.join());
    assert.deepEqual(await page.$$eval('#cluster-status .node-chip.bad', (cs) => cs.map((c) => c.textContent)), ['sz-02']);
    await shot(page, 'cluster-monitor');
    // Live calls: no call anywhere, and the same strip.
    await page.click('a[data-route="live"]');
    await page.waitForSelector('#page-live:not([hidden])');
    await page.waitForFunction(() => document.querySelector('#cluster-status .node-chip.bad')?.textContent === 'sz-02');
    assert.equal(await page.isVisible('#live-empty'), true);
    await page.reload();
    await page.waitForSelector('#node-picker:not([hidden])');
    assert.equal(await page.inputValue('#node-select'), 'cluster');
    await page.selectOption('#node-select', 'local');
    await page.waitForSelector('#cluster-status', { state: 'hidden' });
    await done();
  });
});
