// The translation table without a browser: both languages have the same keys, and every key
// the pages use is in it.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const assets = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../http/assets');

// i18n.js reads `location` and `document` only in functions the table does not need.
const { table } = await import(path.join(assets, 'i18n.js'));

test('zh and en have the same keys, none empty', () => {
  assert.deepEqual(Object.keys(table.en).sort(), Object.keys(table.zh).sort());
  for (const [lang, entries] of Object.entries(table)) {
    for (const [key, text] of Object.entries(entries)) assert.ok(text.trim(), `${lang} ${key}`);
  }
});

test('every literal key the pages use is in the table', () => {
  const used = new Set();
  for (const file of readdirSync(assets)) {
    const text = readFileSync(path.join(assets, file), 'utf8');
    if (file.endsWith('.html')) for (const m of text.matchAll(/data-i18n(?:-aria|-placeholder)?="([^"]+)"/g)) used.add(m[1]);
    if (file.endsWith('.js')) for (const m of text.matchAll(/\bt\('([a-z_.]+)'/g)) used.add(m[1]);
  }
  const missing = [...used].filter((k) => !(k in table.zh));
  assert.deepEqual(missing, []);
  assert.ok(used.size > 80, `found only ${used.size} keys`);
});
