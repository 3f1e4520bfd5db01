// The API page (GET /api/docs) in headless Chromium: it loads, lists every operation of the OpenAPI
// document, and "Try it out" on GET /api/models gets the catalog from the app. Nothing is fetched
// from anywhere but the app. Prints one JSON line; exit 0 when every check passed.
//
//   node scripts/docs_check.mjs --url http://127.0.0.1:7071 [--pw-dir /tmp/browser-check-node]
//
// playwright-core and Debian's chromium as scripts/browser_check.sh installs them.
import { createRequire } from 'node:module'
import path from 'node:path'

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, arg, i, all) =>
  arg.startsWith('--') ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs, []))
const base = (args.url || 'http://127.0.0.1:7071').replace(/\/$/, '')
const pwDir = path.resolve(args['pw-dir'] || process.env.BROWSER_CHECK_NODE_DIR || '/tmp/browser-check-node')
const { chromium } = createRequire(path.join(pwDir, 'noop.js'))('playwright-core')

const result = { ok: false, operations: 0, documented: 0, foreign: [], errors: [], tryIt: null }
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
})
try {
  const page = await browser.newPage()
  page.on('request', (request) => {
    const url = request.url()
    if (!url.startsWith(base) && !url.startsWith('data:')) result.foreign.push(url)
  })
  page.on('pageerror', (err) => result.errors.push(String(err)))
  page.on('console', (message) => { if (message.type() === 'error') result.errors.push(message.text()) })
  const document = await (await fetch(`${base}/api/openapi.json`)).json()
  result.documented = Object.values(document.paths).reduce((n, item) => n + Object.keys(item).length, 0)
  await page.goto(`${base}/api/docs`, { waitUntil: 'networkidle' })
  await page.waitForSelector('.opblock', { timeout: 30000 })
  result.operations = await page.locator('.opblock').count()

  // Try it out: GET /api/models
  const models = page.locator('#operations-default-listModels, [id$="-listModels"]').first()
  await models.locator('.opblock-summary').click()
  await models.locator('button.try-out__btn').click()
  const answered = page.waitForResponse((r) => r.url() === `${base}/api/models` && r.request().method() === 'GET')
  await models.locator('button.execute').click()
  const response = await answered
  await models.locator('.responses-wrapper .live-responses-table').waitFor({ timeout: 15000 })
  const shown = await models.locator('.responses-wrapper .live-responses-table tbody .response-col_status').first().innerText()
  const body = await response.json()
  result.tryIt = { status: response.status(), shown: shown.trim(), models: (body.models || []).length }
  result.ok = result.operations === result.documented && result.foreign.length === 0 &&
    result.tryIt.status === 200 && result.tryIt.models > 0 && result.tryIt.shown.startsWith('200')
} catch (err) {
  result.errors.push(String(err && err.stack || err))
} finally {
  await browser.close()
}
console.log(JSON.stringify(result))
process.exit(result.ok ? 0 : 1)
