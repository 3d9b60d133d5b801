// The web front end in Debian's Chromium, against a running sipedge (tests/ui.rs starts it
// on a seeded store and passes its address in SIPEDGE_URL). Every number the page shows is
// checked against the API's own answer to the same query.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.SIPEDGE_URL;
const LOG_CDR = process.env.SIPEDGE_LOG_CDR;
const SHOTS = process.env.SIPEDGE_SCREENSHOTS || 'target/ui-screenshots';
if (!BASE) throw new Error('SIPEDGE_URL is not set: run these tests through `cargo test --test ui`');

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

async function api(pathAndQuery, base = BASE) {
  const response = await fetch(`${base}${pathAndQuery}`);
  assert.equal(response.status, 200, `${pathAndQuery}: ${response.status}`);
  return response.json();
}

/** A page at 1366×768 in a zone other than the node's, whose console errors are collected. */
async function open(url, { expectedErrors = /^$/, ...options } = {}) {
  const context = await browser.newContext({
    viewport: { width: 1366, height: 768 },
    locale: 'zh-CN',
    timezoneId: 'UTC',
    ...options,
  });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    const where = message.location()?.url || '';
    // Until the monitoring work lands, /api/processes answers 404, which the page shows as
    // an empty state; Chromium still logs the failed load.
    if (where.endsWith('/api/processes') && message.text().includes('404')) return;
    if (expectedErrors.test(where)) return;
    problems.push(`${message.text()} @ ${where}`);
  });
  page.on('pageerror', (err) => problems.push(`uncaught: ${err.message}`));
  page.on('requestfailed', (request) => {
    if (request.failure()?.errorText === 'net::ERR_ABORTED') return;
    problems.push(`request failed: ${request.url()} ${request.failure()?.errorText}`);
  });
  await page.goto(url);
  return {
    page,
    context,
    async done() {
      await context.close();
      assert.deepEqual(problems, [], 'the browser console has errors');
    },
  };
}

async function shot(page, name, fullPage = false) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage });
}

const digits = (text) => Number(String(text).replace(/[^\d]/g, ''));

function addDays(date, days) {
  const [y, m, d] = date.split('-').map(Number);
  return new Date(Date.UTC(y, m - 1, d + days)).toISOString().slice(0, 10);
}

/** Waits until the query on screen has been answered for `expectedCsv`'s query string. */
async function waitForResults(page) {
  await page.waitForSelector('#query-results[aria-busy="false"] .bar-chart');
  await page.waitForFunction(() => document.querySelector('#q-csv').getAttribute('href').includes('start='));
}

describe('query', () => {
  test('the form shows the document defaults: today 00:00:00 to the next day 00:00:00', async () => {
    const defaults = await api('/api/stats');
    const today = defaults.start.slice(0, 10);
    const { page, done } = await open(`${BASE}/#/query`);
    await waitForResults(page);
    assert.equal(await page.inputValue('#q-start'), `${today} 00:00:00`);
    assert.equal(await page.inputValue('#q-end'), `${addDays(today, 1)} 00:00:00`);
    assert.equal(defaults.end.slice(0, 10), addDays(today, 1));
    assert.equal(await page.inputValue('#q-type'), '');
    assert.equal(await page.inputValue('#q-status'), '');
    assert.equal(await page.inputValue('#q-caller'), '');
    assert.equal(await page.inputValue('#q-called'), '');
    const typeOptions = await page.$$eval('#q-type option', (os) => os.map((o) => [o.value, o.textContent]));
    assert.deepEqual(typeOptions, [['', '全部'], ['audio', '语音'], ['video', '视频']]);
    const statusOptions = await page.$$eval('#q-status option', (os) => os.map((o) => [o.value, o.textContent]));
    assert.deepEqual(statusOptions, [['', '全部'], ['connected', '接通'], ['not_connected', '未接通']]);
    await shot(page, 'query');
    await shot(page, 'query-full', true);
    await page.evaluate(() => document.querySelector('.chart-card').scrollIntoView());
    await shot(page, 'query-results');
    await done();
  });

  test('a one-day query shows 24 hourly bar groups, and totals, statistics, rows and CSV equal the API', async () => {
    const { page, done } = await open(`${BASE}/#/query`);
    await waitForResults(page);
    assert.equal(await page.getAttribute('.bar-chart', 'data-bucket'), 'hour');
    assert.equal(await page.locator('.bar-chart .bar-group').count(), 24);
    assert.equal(await page.locator('.bar-chart .bar-group rect.bar').count(), 48);

    const csvHref = await page.getAttribute('#q-csv', 'href');
    const qs = csvHref.slice(csvHref.indexOf('?'));
    const stats = await api(`/api/stats${qs}`);
    assert.equal(stats.bucket, 'hour');
    assert.equal(stats.buckets.length, 24);
    assert.ok(stats.totals.all.calls > 100, 'the seed puts calls into today');

    for (const type of ['audio', 'video', 'all']) {
      for (const field of ['calls', 'connected']) {
        const cell = page.locator(`#stats-table td[data-type="${type}"][data-field="${field}"]`);
        assert.equal(digits(await cell.textContent()), stats.totals[type][field], `${type}.${field}`);
      }
      const talk = await page.getAttribute(`#stats-table td[data-type="${type}"][data-field="talk_s"]`, 'title');
      assert.equal(talk, `${stats.totals[type].talk_s} s`, `${type}.talk_s`);
    }
    assert.equal(digits(await page.textContent('[data-total="all.calls"]')), stats.totals.all.calls);
    // Each bar is its bucket's talk time.
    const bars = await page.$$eval('.bar-chart rect.bar', (rs) => rs.map((r) => [r.dataset.type, Number(r.dataset.talk)]));
    const expected = stats.buckets.flatMap((b) => [['audio', b.audio.talk_s], ['video', b.video.talk_s]]);
    assert.deepEqual(bars, expected);

    // The first page of records is the API's first page.
    const cdrs = await api(`/api/cdrs${qs}&limit=100`);
    const ids = await page.$$eval('#record-rows tr', (rows) => rows.map((r) => r.dataset.id));
    assert.deepEqual(ids, cdrs.items.map((c) => c.id));
    assert.equal(ids.length, Math.min(100, stats.totals.all.calls));
    await page.click('#q-pager button:last-child');
    await page.waitForFunction((first) => document.querySelector('#record-rows tr')?.dataset.id !== first, ids[0]);
    const next = await api(`/api/cdrs${qs}&limit=100&cursor=${encodeURIComponent(cdrs.next_cursor)}`);
    assert.equal(await page.getAttribute('#record-rows tr', 'data-id'), next.items[0].id);

    // The CSV link is exactly the query shown: one row per record.
    const csv = await (await fetch(`${BASE}${csvHref}`)).text();
    assert.equal(csv.trim().split('\r\n').length - 1, stats.totals.all.calls);
    await done();
  });

  test('a three-day query shows 3 daily bar groups', async () => {
    const defaults = await api('/api/stats');
    const today = defaults.start.slice(0, 10);
    const { page, done } = await open(`${BASE}/#/query`);
    await waitForResults(page);
    // The document's compact form is accepted too, and shown back in the long one.
    await page.fill('#q-start', `${addDays(today, -2).replaceAll('-', '')}000000`);
    await page.fill('#q-end', `${addDays(today, 1)} 00:00:00`);
    await page.selectOption('#q-type', 'video');
    await page.click('#q-submit');
    await page.waitForSelector('.bar-chart[data-bucket="day"]');
    await page.waitForSelector('#query-results[aria-busy="false"]');
    assert.equal(await page.locator('.bar-chart .bar-group').count(), 3);
    const csvHref = await page.getAttribute('#q-csv', 'href');
    assert.match(csvHref, /type=video/);
    // Away to another view and back through the tab: the query on screen stays.
    await page.click('a[data-route="live"]');
    await page.click('a[data-route="query"]');
    await page.waitForSelector('#page-query:not([hidden])');
    assert.equal(await page.inputValue('#q-type'), 'video');
    assert.equal(await page.locator('.bar-chart .bar-group').count(), 3);
    assert.match(page.url(), /type=video/);
    const stats = await api(`/api/stats${csvHref.slice(csvHref.indexOf('?'))}`);
    assert.equal(stats.bucket, 'day');
    assert.equal(digits(await page.textContent('#stats-table td[data-type="all"][data-field="calls"]')), stats.totals.all.calls);
    assert.equal(stats.totals.audio.calls, 0);
    assert.equal(await page.inputValue('#q-start'), `${addDays(today, -2)} 00:00:00`);
    await shot(page, 'query-3-days');
    // Choosing a day's bars zooms into that day, hour by hour, keeping the other conditions.
    await page.locator('.bar-chart .bar-group').nth(2).click();
    await page.waitForSelector('.bar-chart[data-bucket="hour"]');
    assert.equal(await page.locator('.bar-chart .bar-group').count(), 24);
    assert.equal(await page.inputValue('#q-start'), `${today} 00:00:00`);
    assert.equal(await page.inputValue('#q-type'), 'video');
    await done();
  });
});

describe('layout', () => {
  test('a wall display gets the same page, larger, with no horizontal scrolling', async () => {
    for (const [name, width, height] of [['wall-live', 2560, 1440], ['wall-query', 2560, 1440], ['small-query', 1366, 768]]) {
      const { page, done } = await open(`${BASE}/#/${name.split('-')[1]}`, { viewport: { width, height } });
      if (name.endsWith('query')) await waitForResults(page);
      else await page.waitForSelector('#live-tiles .tile');
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
      assert.equal(overflow, 0, `${name}: the page scrolls sideways`);
      if (width > 2000) {
        const size = await page.evaluate(() => parseFloat(getComputedStyle(document.documentElement).fontSize));
        assert.ok(size >= 18, `${name}: root font ${size}px`);
        await shot(page, name);
      }
      await done();
    }
  });
});

describe('accessibility', () => {
  test('every control on every view has a name, and the views are reachable by keyboard', async () => {
    const { page, done } = await open(`${BASE}/#/query`);
    await waitForResults(page);
    for (const view of ['query', 'live', 'monitor', `log/${LOG_CDR}`]) {
      await page.goto(`${BASE}/#/${view}`);
      await page.waitForLoadState('networkidle');
      const unnamed = await page.evaluate(() =>
        [...document.querySelectorAll('main input, main select, main button, main a, header button, header a, dialog button')]
          .filter((e) => e.offsetParent !== null || e.closest('dialog'))
          .filter((e) => !(e.labels?.length || e.getAttribute('aria-label') || e.textContent.trim()))
          .map((e) => e.outerHTML.slice(0, 80)),
      );
      assert.deepEqual(unnamed, [], view);
    }
    // Tab from the top of a freshly loaded page reaches the tabs in order.
    await page.goto('about:blank');
    await page.goto(`${BASE}/#/live`);
    await page.waitForSelector('#live-tiles .tile');
    await page.keyboard.press('Tab');
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement.dataset.route), 'query');
    await page.keyboard.press('Enter');
    await page.waitForSelector('#page-query:not([hidden])');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'query-title');
    await done();
  });
});

describe('bad input', () => {
  test('a malformed time is refused in the form; one the API refuses is explained in the banner', async () => {
    const { page, done } = await open(`${BASE}/#/query`, { expectedErrors: /start=2026-02-30/ });
    await waitForResults(page);
    const before = await page.getAttribute('#q-csv', 'href');
    await page.fill('#q-start', 'yesterday');
    await page.click('#q-submit');
    assert.match(await page.$eval('#q-start', (i) => i.validationMessage), /年-月-日/);
    assert.equal(await page.getAttribute('#q-csv', 'href'), before);
    await page.fill('#q-start', '2026-02-30 00:00:00');
    await page.click('#q-submit');
    const banner = page.locator('#errors .error-item');
    await banner.waitFor();
    const text = await banner.textContent();
    assert.match(text, /查询失败/);
    assert.match(text, /start/);
    assert.match(text, /HTTP 400/);
    assert.equal(await page.getAttribute('#q-csv', 'href'), before, 'the CSV link still names the query shown');
    await shot(page, 'query-error');
    await done();
  });
});

describe('view log', () => {
  test('"view log" on a record shows the ladder with the call\'s messages and events', async () => {
    assert.ok(LOG_CDR, 'SIPEDGE_LOG_CDR names the seeded call with a log');
    const cdr = await api(`/api/cdrs/${LOG_CDR}`);
    const log = await api(`/api/cdrs/${LOG_CDR}/log`);
    const { page, done } = await open(`${BASE}/#/query`);
    await waitForResults(page);
    await page.fill('#q-caller', cdr.caller);
    await page.click('#q-submit');
    const row = page.locator(`#record-rows tr[data-id="${LOG_CDR}"]`);
    await row.waitFor();
    await row.getByRole('link', { name: /日志查看/ }).click();
    await page.waitForSelector('#ladder .ladder-row.sip');
    assert.match(page.url(), new RegExp(`#/log/${LOG_CDR}$`));

    const sips = log.entries.filter((e) => e.type === 'sip');
    const events = log.entries.filter((e) => e.type === 'event');
    assert.equal(sips.length, 12);
    assert.equal(await page.locator('#ladder .ladder-row.sip').count(), sips.length);
    assert.equal(await page.locator('#ladder .ladder-row.event').count(), events.length);
    const titles = await page.$$eval('#ladder .lane-title strong', (s) => s.map((x) => x.textContent));
    assert.deepEqual(titles, ['终端', 'sipedge', 'Sipserver']);
    // Each arrow is labelled with its message's first line, goes the right way, and carries its time.
    const arrows = await page.$$eval('#ladder .ladder-row.sip', (rows) =>
      rows.map((r) => ({
        label: r.getAttribute('aria-label'),
        seg: r.querySelector('.arrow').classList.contains('seg-left') ? 'left' : 'right',
        dir: r.querySelector('.arrow').classList.contains('dir-r') ? 'r' : 'l',
      })),
    );
    sips.forEach((entry, i) => {
      const first = entry.text.split('\r\n')[0];
      assert.ok(arrows[i].label.endsWith(first), `${arrows[i].label} / ${first}`);
      assert.ok(arrows[i].label.startsWith(entry.at.slice(11, 23)), arrows[i].label);
      const terminalSide = entry.direction === 'received' ? entry.src === cdr.terminal : entry.dst === cdr.terminal;
      assert.equal(arrows[i].seg, terminalSide ? 'left' : 'right', first);
      assert.equal(arrows[i].dir, terminalSide === (entry.direction === 'received') ? 'r' : 'l', first);
    });
    const notes = await page.$$eval('#ladder .event-note', (n) => n.map((x) => x.textContent));
    assert.ok(notes.some((n) => n.includes(events[0].text)), notes.join('|'));
    await shot(page, 'log');
    await shot(page, 'log-full', true);

    // Any message opens in full, byte for byte, and Escape closes it.
    await page.locator('#ladder .ladder-row.sip').nth(5).click();
    await page.waitForSelector('#message-dialog[open]');
    assert.equal(await page.$eval('#message-text', (p) => p.textContent), sips[5].text);
    await shot(page, 'log-message');
    await page.keyboard.press('Escape');
    await page.waitForSelector('#message-dialog[open]', { state: 'detached' });
    // The dialog's `close` event, which gives focus back to the arrow that opened it, comes
    // after the dialog has closed; wait for it before moving focus elsewhere.
    const fifth = await page.locator('#ladder .ladder-row.sip').nth(5).elementHandle();
    await page.waitForFunction((row) => document.activeElement === row, fifth);
    // By keyboard alone: Enter on a focused arrow opens it, Escape gives focus back to it.
    await page.locator('#ladder .ladder-row.sip').nth(0).focus();
    await page.keyboard.press('Enter');
    await page.waitForSelector('#message-dialog[open]');
    assert.equal(await page.$eval('#message-text', (p) => p.textContent), sips[0].text);
    await page.keyboard.press('Escape');
    await page.waitForSelector('#message-dialog[open]', { state: 'detached' });
    assert.equal(await page.evaluate(() => document.activeElement.dataset.index), '0');
    await done();
  });
});

describe('language', () => {
  test('Chinese by default; ?lang=en and the switch change the labels, and the choice is remembered', async () => {
    const { page, context, done } = await open(`${BASE}/`);
    await page.waitForSelector('#live-tiles .tile');
    assert.equal(await page.getAttribute('html', 'lang'), 'zh-CN');
    assert.equal(await page.textContent('a[data-route="query"]'), '业务查询');
    await page.goto(`${BASE}/?lang=en#/query`);
    await waitForResults(page);
    assert.equal(await page.getAttribute('html', 'lang'), 'en');
    assert.equal(await page.textContent('a[data-route="query"]'), 'Query');
    assert.equal(await page.textContent('label[for="q-start"]'), 'Start time');
    assert.equal(await page.textContent('#stats-table tbody th'), 'Voice');
    await shot(page, 'query-en');
    await page.click('#lang-switch');
    assert.equal(await page.textContent('label[for="q-start"]'), '开始时间');
    assert.equal(await page.textContent('#stats-table tbody th'), '语音');
    assert.equal(await page.textContent('a[data-route="live"] span'), '实时监控');
    // Remembered: a page opened without ?lang keeps the last choice.
    await page.click('#lang-switch');
    const again = await context.newPage();
    await again.goto(`${BASE}/#/monitor`);
    await again.waitForSelector('#alarm-rows tr');
    assert.equal(await again.textContent('a[data-route="monitor"] span'), 'Monitoring');
    await again.close();
    await done();
  });
});

describe('monitoring and live calls', () => {
  test('alarms newest first with the active ones highlighted; processes say when the API has none', async () => {
    const alarms = await api('/api/alarms');
    const { page, done } = await open(`${BASE}/#/monitor`);
    await page.waitForSelector('#alarm-rows tr');
    const rows = await page.$$eval('#alarm-rows tr', (rs) => rs.map((r) => ({ id: r.dataset.id, active: r.classList.contains('alarm-active') })));
    const expected = [...alarms.items].sort((a, b) => Date.parse(b.raised_at) - Date.parse(a.raised_at));
    assert.deepEqual(rows.map((r) => r.id), expected.map((a) => a.id));
    assert.deepEqual(rows.map((r) => r.active), expected.map((a) => a.cleared_at === null));
    const activeCount = expected.filter((a) => a.cleared_at === null).length;
    assert.equal(digits(await page.textContent('#alarm-count')), activeCount);
    await page.check('#alarm-active-only');
    assert.equal(await page.locator('#alarm-rows tr').count(), activeCount);
    await page.uncheck('#alarm-active-only');
    const processes = await fetch(`${BASE}/api/processes`);
    if (processes.status === 404) {
      await page.waitForSelector('#processes .empty');
      assert.match(await page.textContent('#processes'), /api\/processes/);
    } else {
      assert.equal(processes.status, 200);
      const body = await processes.json();
      const items = Array.isArray(body) ? body : body.items;
      if (items.length > 0) {
        await page.waitForSelector('#processes table');
        assert.equal(await page.locator('#processes tbody tr').count(), items.length);
        const row = await page.textContent('#processes tbody tr');
        assert.match(row, new RegExp(items[0].name));
        if (typeof items[0].rss_mb === 'number') assert.match(row, /[KMG]iB/);
      } else {
        await page.waitForSelector('#processes .empty');
        assert.match(await page.textContent('#processes'), /未配置/);
      }
    }
    await shot(page, 'monitor');
    await done();
  });

  test('live calls: the live view loads, subscribes to /api/events and shows the API\'s calls', async () => {
    const live = await api('/api/calls/live');
    const { page, done } = await open(`${BASE}/#/live`);
    await page.waitForSelector('#stream.ok');
    await page.waitForSelector('#live-tiles .tile');
    assert.equal(await page.locator('#live-rows tr').count(), live.items.length);
    assert.equal(digits(await page.textContent('[data-tile="live.total"]')), live.items.length);
    if (live.items.length === 0) assert.equal(await page.isVisible('#live-empty'), true);
    await shot(page, 'live');
    await done();
  });
});

describe('live calls, scripted', () => {
  // The live view's own logic (appear, change, leave, resync after a reconnect, ticking
  // durations) against a scripted /api/events and /api/calls/live. The same view against real
  // SIP calls is the SIPp test, once call tracking publishes events.
  test('calls appear on call.started, change on ringing/answered, leave on call.ended; durations tick', async () => {
    const now = Date.now();
    const at = (msAgo) => new Date(now - msAgo).toISOString().replace('Z', '+00:00');
    const call = (id, caller, called, type, state, startAgo, answerAgo) => ({
      id, node: 'ui-01', call_id: `${id}@script`, caller, called, caller_uri: `sip:${caller}@t`, called_uri: `sip:${called}@b`,
      call_type: type, state, start_time: at(startAgo), ring_time: null, answer_time: answerAgo ? at(answerAgo) : null,
      video_started_at: null, transport: 'udp', terminal: `198.51.100.9:${40000 + caller.length}`,
    });
    const a = call('0000000000000a', '13800000001', '95566', 'audio', 'trying', 2000);
    const b = call('0000000000000b', '13900000002', '95588', 'video', 'trying', 65000);
    const c = call('0000000000000c', '15000000003', '400800', 'audio', 'connected', 3725000, 3700000);
    const d = call('0000000000000d', '18620000004', '95566', 'audio', 'ringing', 9000);
    const chunks = [
      [['call.started', a], ['call.started', b], ['call.ringing', { ...b, state: 'ringing' }], ['call.answered', { ...b, state: 'connected', answer_time: at(60000) }], ['call.started', c], ['call.started', d]],
      [['call.ended', { ...a, state: 'ended' }]],
    ];
    const truth = new Map();
    let connections = 0;
    let lastId = 0;
    const { page, context, done } = await open('about:blank');
    await context.route('**/api/calls/live', (route) => route.fulfill({ json: { items: [...truth.values()] } }));
    await context.route('**/api/events', async (route) => {
      const chunk = chunks[connections] || [];
      connections += 1;
      const hold = connections < chunks.length ? 300 : 600000;
      let body = `retry: ${hold}\n: scripted\n\n`;
      for (const [name, data] of chunk) {
        lastId += 1;
        body += `id: ${lastId}\nevent: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
        if (name === 'call.ended') truth.delete(data.id);
        else truth.set(data.id, data);
      }
      await route.fulfill({ status: 200, headers: { 'content-type': 'text/event-stream' }, body });
    });
    await page.goto(`${BASE}/#/live`);
    const rows = page.locator('#live-rows tr');
    await page.waitForFunction(() => document.querySelectorAll('#live-rows tr').length === 4 || document.querySelector('#live-rows tr.leaving'));
    // Newest first; states as the last event said.
    assert.equal(await page.getAttribute('#live-rows tr:nth-child(3)', 'data-id'), b.id);
    assert.match(await page.textContent(`tr[data-id="${d.id}"]`), /振铃/);
    assert.match(await page.textContent(`tr[data-id="${b.id}"]`), /通话中/);
    assert.match(await page.textContent(`tr[data-id="${b.id}"]`), /视频/);
    await page.waitForSelector(`tr[data-id="${a.id}"]`, { state: 'detached' });
    assert.equal(await rows.count(), 3);
    assert.equal(digits(await page.textContent('[data-tile="live.total"]')), 3);
    assert.equal(digits(await page.textContent('[data-tile="live.ringing"]')), 1);
    assert.equal(digits(await page.textContent('#live-count')), 3);
    assert.equal(await page.title(), '(3) 实时通话 · sipedge');
    const elapsed = page.locator(`tr[data-id="${c.id}"] td:nth-child(6)`);
    assert.match(await elapsed.textContent(), /^1:02:0\d$/);
    const first = await elapsed.textContent();
    await page.waitForFunction(([id, before]) => document.querySelector(`tr[data-id="${id}"] td:nth-child(6)`).textContent !== before, [c.id, first]);
    await page.mouse.move(0, 0);
    await shot(page, 'live-calls');
    // The filter box narrows the list by number.
    await page.fill('#live-filter', '1500');
    await page.waitForSelector(`tr[data-id="${b.id}"]`, { state: 'hidden' });
    assert.equal(await page.isVisible(`tr[data-id="${c.id}"]`), true);
    await page.fill('#live-filter', '999');
    assert.match(await page.textContent('#live-empty'), /没有号码匹配/);
    await page.fill('#live-filter', '');
    assert.equal(await page.isVisible(`tr[data-id="${b.id}"]`), true);
    await done();
  });
});

describe('access control', () => {
  test('behind api.users the pages work with the browser\'s Basic credentials', { skip: !process.env.SIPEDGE_AUTH_URL && 'SIPEDGE_AUTH_URL not set' }, async () => {
    const base = process.env.SIPEDGE_AUTH_URL;
    const refused = await fetch(`${base}/`);
    assert.equal(refused.status, 401);
    const { page, done } = await open(`${base}/#/query`, {
      httpCredentials: { username: process.env.SIPEDGE_AUTH_USER, password: process.env.SIPEDGE_AUTH_PASSWORD },
    });
    await waitForResults(page);
    await page.waitForSelector('#stream.ok');
    assert.equal(await page.locator('.bar-chart .bar-group').count(), 24);
    assert.equal(await page.locator('#errors .error-item').count(), 0);
    await done();
  });
});
