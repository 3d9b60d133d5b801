// A real call on the Live calls view: tests/ui.rs starts sipedge with call tracking between a
// SIPp terminal and a SIPp Sipserver, and places one video call once this test says the page
// is open (SIPEDGE_READY_FILE). The call must appear, show as talking, have its SIP log
// readable while it is up, and leave the view when it ends.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.SIPEDGE_URL;
const READY = process.env.SIPEDGE_READY_FILE;
const CALL_MS = Number(process.env.SIPEDGE_CALL_MS || 10000);
const SHOTS = process.env.SIPEDGE_SCREENSHOTS || 'target/ui-screenshots';
if (!BASE || !READY) throw new Error('run these tests through `cargo test --test ui`');

test('while a SIPp call is up it is on Live calls, its log grows, and it leaves when it ends', async () => {
  const browser = await chromium.launch({
    executablePath: process.env.SIPEDGE_CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1366, height: 768 }, locale: 'zh-CN', timezoneId: 'UTC' });
    const page = await context.newPage();
    const problems = [];
    page.on('console', (m) => {
      if (m.type() !== 'error') return;
      const where = m.location()?.url || '';
      // While the call is up its record does not exist yet: the log view asks and gets 404.
      if (/\/api\/cdrs\/[^/]+$/.test(where) && m.text().includes('404')) return;
      problems.push(`${m.text()} @ ${where}`);
    });
    page.on('pageerror', (err) => problems.push(`uncaught: ${err.message}`));
    await page.goto(`${BASE}/#/live`);
    await page.waitForSelector('#stream.ok');
    await page.waitForSelector('#live-empty:not([hidden])');
    writeFileSync(READY, 'open\n');

    // It appears, and turns to talking and video once answered.
    const row = page.locator('#live-rows tr');
    await row.first().waitFor({ timeout: CALL_MS });
    assert.equal(await row.count(), 1);
    await page.waitForSelector('#live-rows tr .state-connected', { timeout: CALL_MS });
    await page.waitForSelector('#live-rows tr .type-video', { timeout: CALL_MS });
    const id = await row.first().getAttribute('data-id');
    const live = await (await fetch(`${BASE}/api/calls/live`)).json();
    const call = live.items.find((c) => c.id === id);
    assert.ok(call, `${id} is not in /api/calls/live`);
    assert.equal(await row.first().locator('td:nth-child(2)').textContent(), call.caller);
    assert.equal(await row.first().locator('td:nth-child(3)').textContent(), call.called);
    assert.equal(digits(await page.textContent('[data-tile="live.connected"]')), 1);
    await page.mouse.move(0, 0);
    await page.screenshot({ path: path.join(SHOTS, 'live-sipp.png') });

    // Its log, while it is up: the INVITE went terminal → sipedge → Sipserver.
    await row.first().getByRole('link').click();
    await page.waitForSelector('#ladder .ladder-row.sip');
    const first = page.locator('#ladder .ladder-row.sip').first();
    assert.match(await first.getAttribute('aria-label'), /终端 → Sipserver: INVITE/);
    assert.equal(await first.locator('.arrow').getAttribute('class'), 'arrow seg-full dir-r');
    assert.match(await page.textContent('#log-summary'), /通话进行中/);
    await page.screenshot({ path: path.join(SHOTS, 'log-live-sipp.png') });
    await page.click('#log-back');

    // It leaves when the caller hangs up.
    await page.waitForSelector('#live-rows tr', { state: 'detached', timeout: CALL_MS + 15000 });
    await page.waitForSelector('#live-empty:not([hidden])');

    // And its record and whole log are there afterwards.
    await page.goto(`${BASE}/#/log/${encodeURIComponent(id)}`);
    // Each relayed message is logged once, from its sender to where sipedge relayed it.
    await page.waitForFunction(() => [...document.querySelectorAll('#ladder .ladder-row.sip')].some((r) => r.getAttribute('aria-label').includes('BYE')));
    const labels = await page.$$eval('#ladder .ladder-row.sip', (rows) => rows.map((r) => r.getAttribute('aria-label').replace(/^\S+ /, '')));
    const expected = ['终端 → Sipserver: INVITE', 'Sipserver → 终端: SIP/2.0 180', 'Sipserver → 终端: SIP/2.0 200', '终端 → Sipserver: ACK', '终端 → Sipserver: BYE', 'Sipserver → 终端: SIP/2.0 200'];
    assert.equal(labels.length, expected.length, labels.join('\n'));
    expected.forEach((start, i) => assert.ok(labels[i].startsWith(start), `${labels[i]} / ${start}`));
    assert.match(await page.textContent('#log-summary'), /视频/);
    await page.screenshot({ path: path.join(SHOTS, 'log-sipp.png'), fullPage: true });
    await context.close();
    assert.deepEqual(problems, [], 'the browser console has errors');
  } finally {
    await browser.close();
  }
});

function digits(text) {
  return Number(String(text).replace(/[^\d]/g, ''));
}
