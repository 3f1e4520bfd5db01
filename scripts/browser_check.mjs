// Drives the earlier service's Vue requester page and admin panel, built and served by
// scripts/browser_check.sh, against this app in headless Debian Chromium (playwright-core).
// One line per step on stdout; a screenshot per step in --out; api-log.txt there lists every
// call the pages made to the app (status, CORS headers, body). Exit 1 if a step fails.
//
//   node scripts/browser_check.mjs --frontend URL --admin URL --api URL --out DIR --pw-dir DIR
//   (the admin password comes from the environment: ADMIN_USERNAME, ADMIN_PASSWORD)

import { createRequire } from 'node:module'
import fs from 'node:fs'
import path from 'node:path'

function parseArgs(argv) {
  const args = {}
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || argv[i + 1] === undefined) throw new Error(`bad argument ${argv[i]}`)
    args[argv[i].slice(2)] = argv[i + 1]
  }
  for (const need of ['frontend', 'admin', 'api', 'out', 'pw-dir']) {
    if (!args[need]) throw new Error(`missing --${need}`)
  }
  return args
}

const args = parseArgs(process.argv.slice(2))
const { chromium } = createRequire(path.join(path.resolve(args['pw-dir']), 'noop.js'))('playwright-core')
const OUT = path.resolve(args.out)
const API = args.api.replace(/\/$/, '')
const USER = process.env.ADMIN_USERNAME || 'admin'
const PASSWORD = process.env.ADMIN_PASSWORD || ''
const STEP_TIMEOUT = 20000
const stamp = Date.now().toString(36)
const EMAIL_1 = `alice.${stamp}@example.com`
const EMAIL_2 = `bob.${stamp}@example.com`
const DENY_REASON = 'Browser check: denied on purpose'

fs.mkdirSync(OUT, { recursive: true })
const apiLog = fs.createWriteStream(path.join(OUT, 'api-log.txt'))
const consoleLog = fs.createWriteStream(path.join(OUT, 'console-log.txt'))

let stepNo = 0
let failed = false

function line(text) { process.stdout.write(text + '\n') }

// A response's body, or a note: Chromium reports a fetch() body only once the page reads it, and
// the admin panel's login never reads the body of POST /api/admin/verify (it checks response.ok).
async function bodyOf(res, ms = 3000) {
  let timer
  const late = new Promise((resolve) => { timer = setTimeout(() => resolve('(body not read by the page)'), ms) })
  try {
    return await Promise.race([res.text().catch(() => '(body not readable)'), late])
  } finally {
    clearTimeout(timer)
  }
}

// Runs one step: a screenshot named NN-<name>.png after it, "FAIL" and a -FAILED screenshot if it throws.
async function step(page, name, fn, { fullPage = false } = {}) {
  stepNo += 1
  const nn = String(stepNo).padStart(2, '0')
  try {
    const said = await fn()
    await settle(page)
    await page.screenshot({ path: path.join(OUT, `${nn}-${name}.png`), fullPage, timeout: 15000 })
    line(`ok   ${nn} ${name}: ${said}`)
  } catch (err) {
    failed = true
    await page.screenshot({ path: path.join(OUT, `${nn}-${name}-FAILED.png`), timeout: 15000 }).catch(() => {})
    const message = String(err && err.message || err).replace(/\x1b\[[0-9;]*m/g, '')
    line(`FAIL ${nn} ${name}: ${message.split('\n').slice(0, 6).join(' | ')}`)
    throw err
  }
}

// The next response that matches, or null after STEP_TIMEOUT (never a rejection: several are
// awaited in turn, and one that nobody awaits yet must not end the run).
function responseOf(page, predicate) {
  return page.waitForResponse(predicate, { timeout: STEP_TIMEOUT }).catch(() => null)
}

// Lets finite CSS transitions and animations (dialogs fading in) end, so a screenshot shows the
// state the step reports, not a frame halfway there. Spinners run forever and are not waited for.
async function settle(page) {
  await page.evaluate(() => Promise.race([
    Promise.all(document.getAnimations()
      .filter((a) => Number.isFinite(a.effect?.getComputedTiming().endTime))
      .map((a) => a.finished.catch(() => {}))),
    new Promise((resolve) => setTimeout(resolve, 3000)),
  ])).catch(() => {})
  await page.waitForTimeout(100)
}

// Every call a page makes to the app, with the CORS headers it got back, goes to api-log.txt;
// requests that fail (a CORS block shows as net::ERR_FAILED) and console errors are kept too.
const calls = new Map() // "METHOD /path" -> what the browser had to preflight for that call

function watch(page, label) {
  const problems = []
  page.on('request', (req) => {
    if (!req.url().startsWith(API)) return
    const u = new URL(req.url())
    const key = `${req.method()} ${u.pathname.replace(/[0-9a-f]{8}-[0-9a-f-]{27}/g, '{id}')}`
    const h = req.headers()
    if (!calls.has(key)) calls.set(key, { method: req.method(), url: req.url(), origin: h.origin,
      headers: ['authorization', 'content-type'].filter((k) => h[k]).join(',') })
  })
  page.on('console', (msg) => {
    consoleLog.write(`[${label}] ${msg.type()}: ${msg.text()}\n`)
    if (msg.type() === 'error' && /CORS|Access-Control|blocked/i.test(msg.text())) problems.push(`console: ${msg.text()}`)
  })
  page.on('pageerror', (err) => {
    consoleLog.write(`[${label}] pageerror: ${err.message}\n`)
    problems.push(`page error: ${err.message}`)
  })
  page.on('requestfailed', (req) => {
    if (req.url().startsWith(API)) {
      const msg = `${req.method()} ${req.url()} failed: ${req.failure()?.errorText}`
      apiLog.write(`[${label}] ${msg}\n\n`)
      problems.push(msg)
    }
  })
  page.on('response', async (res) => {
    const req = res.request()
    if (!req.url().startsWith(API)) return
    const body = (await bodyOf(res)).slice(0, 2000)
    const h = res.headers()
    const cors = Object.entries(h).filter(([k]) => k.startsWith('access-control-') || k === 'vary')
      .map(([k, v]) => `${k}: ${v}`).join('; ')
    const sent = req.headers()
    const sentInfo = ['origin', 'content-type', 'authorization'].filter((k) => sent[k])
      .map((k) => `${k}: ${k === 'authorization' ? sent[k].split(' ')[0] + ' ***' : sent[k]}`).join('; ')
    apiLog.write(`[${label}] ${req.method()} ${req.url()} -> ${res.status()}\n  sent: ${sentInfo}\n  cors: ${cors || '(none)'}\n  body: ${body}\n\n`)
  })
  return problems
}

// The pages ask a public CDN for icons (Iconify); this machine has no such network. Abort those
// at once so nothing waits on them; the pages fall back to no icon.
async function localOnly(context) {
  await context.route('**/*', (route) => {
    const host = new URL(route.request().url()).hostname
    if (host === '127.0.0.1' || host === 'localhost') return route.continue()
    return route.abort('blockedbyclient')
  })
}

function explain(problems) {
  return problems.length ? ` [the browser reported: ${problems.slice(-3).join(' || ')}]` : ''
}

async function visibleDialog(page) {
  return page.locator('.v-overlay--active .v-card').last()
}

async function requester(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } })
  await localOnly(context)
  const page = await context.newPage()
  page.setDefaultTimeout(STEP_TIMEOUT)
  const problems = watch(page, 'requester')

  await step(page, 'requester-loaded', async () => {
    const models = responseOf(page, (r) => r.url() === `${API}/api/models`)
    const featured = responseOf(page, (r) => r.url() === `${API}/api/featured-models`)
    await page.goto(args.frontend, { waitUntil: 'domcontentloaded' })
    if ((await Promise.all([models, featured])).includes(null)) throw new Error(`the page never got /api/models and /api/featured-models${explain(problems)}`)
    // The model list sits in the "Advanced Options" panel; the featured picks are always shown.
    const cards = page.locator('.featured-card')
    await cards.first().waitFor({ timeout: STEP_TIMEOUT }).catch(() => { throw new Error(`no featured model cards${explain(problems)}`) })
    await page.locator('.v-expansion-panel-title', { hasText: 'Advanced Options' }).click()
    const modelCards = page.locator('.model-card')
    await modelCards.first().waitFor({ timeout: STEP_TIMEOUT }).catch(async () => {
      const alert = await page.locator('.v-expansion-panel-text .v-alert').textContent().catch(() => '')
      throw new Error(`no model cards; the page shows: ${alert || '(nothing)'}${explain(problems)}`)
    })
    await page.locator('#request-form').scrollIntoViewIfNeeded()
    const featuredTitles = await cards.locator('h4').allTextContents()
    const modelTitles = await modelCards.locator('h4').allTextContents()
    return `featured [${featuredTitles.map((t) => t.trim()).join(', ')}]; models [${modelTitles.map((t) => t.trim()).join(', ')}]`
  })

  await step(page, 'requester-model-picked', async () => {
    const card = page.locator('.model-card', { has: page.locator('h4', { hasText: /^\s*OpenAI GPT-4o\s*$/ }) })
    await card.click()
    await page.locator('.model-card.model-card-selected').waitFor({ timeout: 5000 })
    const value = await page.locator('.v-expansion-panel-text input').first().inputValue()
    if (value !== 'gpt-4o') throw new Error(`the model field holds ${JSON.stringify(value)}, expected "gpt-4o"`)
    await card.scrollIntoViewIfNeeded()
    return `selected card "${(await card.locator('h4').textContent()).trim()}", model field = ${value}`
  })

  async function fillEmailAndTerms(email) {
    const input = page.locator('input[type="email"]')
    await input.fill(email)
    const terms = page.locator('.v-checkbox input[type="checkbox"]')
    if (!(await terms.isChecked())) {
      // the box itself: its label holds a link that opens the terms dialog instead
      await page.locator('.v-checkbox .v-selection-control__input').click()
      await page.waitForFunction(() => document.querySelector('.v-checkbox input[type="checkbox"]').checked, null, { timeout: 5000 })
    }
    await input.scrollIntoViewIfNeeded()
    return { value: await input.inputValue(), terms: await terms.isChecked() }
  }

  await step(page, 'requester-email-typed', async () => {
    const { value, terms } = await fillEmailAndTerms(EMAIL_1)
    const submit = page.locator('button[type="submit"]')
    await submit.scrollIntoViewIfNeeded()
    if (await submit.isDisabled()) throw new Error('the submit button stays disabled')
    return `email "${value}", terms accepted=${terms}, submit enabled`
  })

  async function awaitOutcome(trigger, expectModel) {
    const posted = responseOf(page, (r) => r.url() === `${API}/api/request-key` && r.request().method() === 'POST')
    await trigger()
    let res
    res = await posted
    if (!res) throw new Error(`no answer to POST /api/request-key${explain(problems)}`)
    const title = page.locator('.v-overlay--active .v-card-title.bg-success, .v-overlay--active .v-card-title.bg-error').first()
    await title.waitFor({ timeout: STEP_TIMEOUT })
    const dialog = await visibleDialog(page)
    const message = (await dialog.locator('.v-card-text').textContent()).trim()
    const titleText = (await title.textContent()).trim()
    const sent = JSON.parse(res.request().postData() || '{}')
    let body = {}
    try { body = JSON.parse(await bodyOf(res)) } catch { /* logged */ }
    if (!(await title.evaluate((el) => el.classList.contains('bg-success')))) {
      throw new Error(`error dialog "${titleText}": "${message}" (HTTP ${res.status()} ${JSON.stringify(body)})${explain(problems)}`)
    }
    if (sent.llm !== expectModel) throw new Error(`the page sent llm=${sent.llm}, expected ${expectModel}`)
    return { titleText, message, status: res.status(), body, sent }
  }

  const first = {}
  await step(page, 'requester-submitted', async () => {
    const out = await awaitOutcome(() => page.locator('button[type="submit"]').click(), 'gpt-4o')
    Object.assign(first, out.body)
    return `dialog "${out.titleText}": "${out.message}" (HTTP ${out.status}, sent ${JSON.stringify(out.sent)}, request_id ${out.body.request_id}, state ${out.body.state})`
  })

  const second = {}
  await step(page, 'requester-second-email-typed', async () => {
    await (await visibleDialog(page)).getByRole('button', { name: /close/i }).click()
    await page.locator('.v-overlay--active').waitFor({ state: 'detached', timeout: 5000 }).catch(() => {})
    const { value } = await fillEmailAndTerms(EMAIL_2)
    return `success dialog closed; email now "${value}"; next: the featured "Anthropic Claude" card's request button`
  })

  await step(page, 'requester-second-submitted', async () => {
    const card = page.locator('.featured-card', { hasText: 'Anthropic Claude' })
    const out = await awaitOutcome(() => card.locator('button', { hasText: /request/i }).last().click(), 'claude-3-5-sonnet')
    Object.assign(second, out.body)
    return `dialog "${out.titleText}": "${out.message}" (HTTP ${out.status}, sent ${JSON.stringify(out.sent)}, request_id ${out.body.request_id}, state ${out.body.state})`
  })

  await context.close()
  return { first: { ...first, email: EMAIL_1, model: 'gpt-4o' }, second: { ...second, email: EMAIL_2, model: 'claude-3-5-sonnet' } }
}

// An admin change must be no simple request: the panel's own Content-Type and Origin, as the app
// requires them (README, "Admin API"). Throws unless the panel sent both.
async function writeHeaders(res) {
  const sent = await res.request().allHeaders()
  const origin = new URL(args.admin).origin
  if ((sent['content-type'] || '').split(';')[0] !== 'application/json' || sent.origin !== origin) {
    throw new Error(`the panel sent Content-Type ${sent['content-type']} and Origin ${sent.origin}; the app needs application/json and ${origin}`)
  }
  return `[Content-Type: ${sent['content-type']}, Origin: ${sent.origin}]`
}

async function tableRows(page) {
  return page.locator('.v-data-table tbody tr').evaluateAll((rows) => rows.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.innerText.trim())))
}

function describeRows(rows) {
  return rows.map((cells) => cells.length >= 4 ? `${cells[1]} ${cells[2]} ${cells[3]}` : cells.join(' ')).join('; ')
}

async function rowFor(page, email) {
  return page.locator('.v-data-table tbody tr', { hasText: email })
}

async function admin(browser, submitted) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } })
  await localOnly(context)
  const page = await context.newPage()
  page.setDefaultTimeout(STEP_TIMEOUT)
  const problems = watch(page, 'admin')
  page.on('dialog', (d) => d.accept()) // the logout confirm(), should it ever show

  await step(page, 'admin-login-form', async () => {
    await page.goto(args.admin, { waitUntil: 'domcontentloaded' })
    await page.getByText('Admin Login').waitFor({ timeout: STEP_TIMEOUT })
    return 'login form shown'
  })

  await step(page, 'admin-logged-in', async () => {
    await page.getByLabel('Username').fill(USER)
    await page.getByLabel('Password').fill(PASSWORD)
    const verify = responseOf(page, (r) => r.url() === `${API}/api/admin/verify`)
    const list = responseOf(page, (r) => r.url().startsWith(`${API}/api/admin/requests?filter=pending`))
    await page.getByRole('button', { name: 'Login' }).click()
    let res
    res = await verify
    if (!res) throw new Error(`no answer to POST /api/admin/verify${explain(problems)}`)
    const dashboard = page.getByText('Key Requests Dashboard')
    await dashboard.waitFor({ timeout: STEP_TIMEOUT }).catch(async () => {
      const alert = await page.locator('.v-alert').textContent().catch(() => '')
      throw new Error(`still on the login form (verify HTTP ${res.status()}); it shows "${(alert || '').trim()}"${explain(problems)}`)
    })
    if (!(await list)) throw new Error(`the dashboard never got /api/admin/requests?filter=pending${explain(problems)}`)
    const who = (await page.locator('.v-app-bar').innerText()).replace(/\s+/g, ' ').trim()
    // The page never reads this body (see bodyOf); ask once more from here to show it.
    const again = await fetch(`${API}/api/admin/verify`, { method: 'POST', headers: {
      Origin: new URL(args.admin).origin, Authorization: `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}` } })
    return `verify HTTP ${res.status()} (same call from node: ${again.status} ${await again.text()}); dashboard shown, app bar "${who}"`
  })

  await step(page, 'admin-pending-list', async () => {
    for (const r of [submitted.first, submitted.second]) {
      await (await rowFor(page, r.email)).waitFor({ timeout: STEP_TIMEOUT }).catch(async () => {
        throw new Error(`no row for ${r.email} on the Pending tab; rows: ${describeRows(await tableRows(page)) || '(none)'}${explain(problems)}`)
      })
    }
    const rows = await tableRows(page)
    for (const r of [submitted.first, submitted.second]) {
      const row = rows.find((c) => c.includes(r.email))
      if (!row || row[3] !== 'Pending') throw new Error(`${r.email} is not shown Pending: ${row}`)
      if (row[0] !== r.request_id) throw new Error(`${r.email} shows id ${row[0]}, the requester page got ${r.request_id}`)
      if (row[2] !== r.model) throw new Error(`${r.email} shows model ${row[2]}, expected ${r.model}`)
    }
    const tab = (await page.locator('.v-tab', { hasText: 'Pending' }).innerText()).replace(/\s+/g, ' ').trim()
    return `tab "${tab}"; ${rows.length} rows: ${describeRows(rows)}`
  })

  await step(page, 'admin-detail-open', async () => {
    await (await rowFor(page, submitted.first.email)).locator('button[title="View Details"]').click()
    const dialog = page.locator('.v-overlay--active .v-card', { hasText: 'Request Details' })
    await dialog.waitFor({ timeout: 5000 })
    const text = (await dialog.innerText()).replace(/\s+/g, ' ').trim()
    if (!text.includes(submitted.first.request_id) || !text.includes(submitted.first.email)) throw new Error(`the dialog does not show the request: ${text}`)
    if (/API Key/.test(text)) throw new Error(`the dialog shows an API key: ${text}`)
    return `dialog: ${text.slice(0, 300)}`
  })

  await step(page, 'admin-deny-reason', async () => {
    const dialog = page.locator('.v-overlay--active .v-card', { hasText: 'Request Details' })
    await dialog.getByRole('button', { name: 'Deny' }).click()
    const deny = page.locator('.v-overlay--active .v-card', { hasText: 'Deny Request' }).last()
    await deny.locator('textarea').first().fill(DENY_REASON)
    return `deny dialog open, reason typed: "${DENY_REASON}"`
  })

  await step(page, 'admin-denied', async () => {
    const deny = page.locator('.v-overlay--active .v-card', { hasText: 'Deny Request' }).last()
    const posted = responseOf(page, (r) => r.url() === `${API}/api/admin/requests/${submitted.first.request_id}/deny`)
    const reload = responseOf(page, (r) => r.url().startsWith(`${API}/api/admin/requests?filter=`) && r.request().method() === 'GET')
    await deny.getByRole('button', { name: 'Deny Request' }).click()
    let res
    res = await posted
    if (!res) throw new Error(`no answer to POST .../deny${explain(problems)}`)
    const snack = page.locator('.v-snackbar__content')
    await snack.waitFor({ timeout: 5000 })
    const said = (await snack.innerText()).trim()
    if (!/denied successfully/.test(said)) throw new Error(`snackbar "${said}" (HTTP ${res.status()} ${await bodyOf(res)})${explain(problems)}`)
    await reload
    await page.waitForTimeout(300)
    const rows = await tableRows(page)
    if (rows.some((c) => c.includes(submitted.first.email))) throw new Error(`${submitted.first.email} is still on the Pending tab`)
    return `sent ${await writeHeaders(res)} ${res.request().postData()} -> HTTP ${res.status()} ${await bodyOf(res)}; snackbar "${said}"; pending now: ${describeRows(rows) || '(none)'}`
  })

  await step(page, 'admin-approved', async () => {
    await page.locator('.v-snackbar__content').waitFor({ state: 'hidden', timeout: 6000 }).catch(() => {})
    const posted = responseOf(page, (r) => r.url() === `${API}/api/admin/requests/${submitted.second.request_id}/approve`)
    const reload = responseOf(page, (r) => r.url().startsWith(`${API}/api/admin/requests?filter=`) && r.request().method() === 'GET')
    await (await rowFor(page, submitted.second.email)).locator('button[title="Approve"]').click()
    let res
    res = await posted
    if (!res) throw new Error(`no answer to POST .../approve${explain(problems)}`)
    const snack = page.locator('.v-snackbar__content')
    await snack.waitFor({ timeout: 5000 })
    const said = (await snack.innerText()).trim()
    if (!/approved successfully/.test(said)) throw new Error(`snackbar "${said}" (HTTP ${res.status()} ${await bodyOf(res)})${explain(problems)}`)
    await reload
    await page.waitForTimeout(300)
    const rows = await tableRows(page)
    if (rows.some((c) => c.includes(submitted.second.email))) throw new Error(`${submitted.second.email} is still on the Pending tab`)
    const empty = rows.length === 1 && rows[0].length === 1 ? ` ("${rows[0][0]}")` : ''
    return `sent ${await writeHeaders(res)} ${res.request().postData() ?? 'no body'} -> HTTP ${res.status()} ${await bodyOf(res)}; snackbar "${said}"; pending now: ${empty || describeRows(rows)}`
  })

  await step(page, 'admin-all-states', async () => {
    const list = responseOf(page, (r) => r.url().startsWith(`${API}/api/admin/requests?filter=all`))
    await page.locator('.v-tab', { hasText: 'All Requests' }).click()
    if (!(await list)) throw new Error(`no answer to GET /api/admin/requests?filter=all${explain(problems)}`)
    await page.waitForTimeout(300)
    const rows = await tableRows(page)
    const want = { [submitted.first.email]: 'Denied', [submitted.second.email]: 'Approved' }
    for (const [email, state] of Object.entries(want)) {
      const row = rows.find((c) => c.includes(email))
      if (!row || row[3] !== state) throw new Error(`${email} shows ${row ? row[3] : 'no row'}, expected ${state}; rows: ${describeRows(rows)}`)
    }
    return `${rows.length} rows: ${describeRows(rows)}`
  })

  await step(page, 'admin-denied-detail', async () => {
    await (await rowFor(page, submitted.first.email)).locator('button[title="View Details"]').click()
    const dialog = page.locator('.v-overlay--active .v-card', { hasText: 'Request Details' })
    await dialog.waitFor({ timeout: 5000 })
    const text = (await dialog.innerText()).replace(/\s+/g, ' ').trim()
    if (!/Status Denied/.test(text)) throw new Error(`the dialog does not show Denied: ${text}`)
    const buttons = await dialog.getByRole('button', { name: /^(Deny|Approve)$/ }).count()
    if (buttons) throw new Error('a denied request still offers Deny/Approve')
    return `dialog: ${text.slice(0, 300)} (no Approve/Deny buttons)`
  })

  await context.close()
}

// Chromium does not show preflights to Playwright, so ask the same OPTIONS question for every
// call the pages made (their Origin, method and non-safelisted headers) and show the answer.
async function preflights() {
  const out = []
  let bad = false
  for (const [key, c] of calls) {
    const res = await fetch(c.url, { method: 'OPTIONS', headers: { Origin: c.origin,
      'Access-Control-Request-Method': c.method, 'Access-Control-Request-Headers': c.headers } })
    const h = (n) => res.headers.get(n) || '-'
    const ok = res.ok && h('access-control-allow-origin') === c.origin &&
      h('access-control-allow-methods').toUpperCase().includes(c.method) &&
      c.headers.split(',').every((x) => h('access-control-allow-headers').toLowerCase().includes(x))
    bad ||= !ok
    out.push(`${key} [${c.headers}] -> ${res.status} allow-origin=${h('access-control-allow-origin')} methods=${h('access-control-allow-methods')} headers=${h('access-control-allow-headers')}${ok ? '' : ' (NOT ALLOWED)'}`)
  }
  if (bad) throw new Error(out.join('; '))
  return out.join('; ')
}

// What the requester sees afterwards: the status endpoint, no key, the reason for the denial.
async function statusCheck(submitted) {
  const out = []
  for (const r of [submitted.first, submitted.second]) {
    const res = await fetch(`${API}/api/requests/${r.request_id}`)
    const body = await res.json()
    out.push(`${r.email}: HTTP ${res.status} state=${body.state} reason=${JSON.stringify(body.reason)}`)
    if ('api_key' in body || 'key' in body) throw new Error(`the status answer carries a key: ${JSON.stringify(body)}`)
  }
  const [a, b] = out
  if (!/state=denied reason="Browser check/.test(a) || !/state=approved/.test(b)) throw new Error(out.join('; '))
  return out.join('; ')
}

// The rules the panel's changes just passed, refused when broken: a body-less approve without
// Content-Type (what a cross-site page can send) is 415, a foreign Origin 403, and a 401 carries
// no Basic challenge. Nothing changes: the guard answers before the request is looked at.
async function writeRules(submitted) {
  const url = `${API}/api/admin/requests/${submitted.first.request_id}/approve`
  const auth = { Authorization: `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}` }
  const simple = await fetch(url, { method: 'POST', headers: { ...auth, Origin: new URL(args.admin).origin } })
  const foreign = await fetch(url, { method: 'POST', headers: { ...auth, 'Content-Type': 'application/json', Origin: 'https://evil.example' } })
  const anonymous = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' } })
  const said = `no Content-Type -> ${simple.status} "${(await simple.json()).message}"; Origin https://evil.example -> ${foreign.status} "${(await foreign.json()).message}"; no credentials -> ${anonymous.status}, WWW-Authenticate ${anonymous.headers.get('www-authenticate') ?? '(none)'}`
  if (simple.status !== 415 || foreign.status !== 403 || anonymous.status !== 401 || anonymous.headers.has('www-authenticate')) throw new Error(said)
  return said
}

// A check that needs no page: one numbered line, ok or FAIL.
async function check(name, fn) {
  stepNo += 1
  const nn = String(stepNo).padStart(2, '0')
  try {
    line(`ok   ${nn} ${name}: ${await fn()}`)
  } catch (err) {
    failed = true
    line(`FAIL ${nn} ${name}: ${err.message}`)
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
})
try {
  const submitted = await requester(browser)
  fs.writeFileSync(path.join(OUT, 'requests.json'), JSON.stringify(submitted, null, 2))
  await admin(browser, submitted)
  await check('status-endpoint', () => statusCheck(submitted))
  await check('admin-write-rules', () => writeRules(submitted))
} catch (err) {
  failed = true
  fs.appendFileSync(path.join(OUT, 'console-log.txt'), `\n[check] stopped: ${err.stack}\n`)
} finally {
  await browser.close()
}
// Also after a failure: what the app answers to the preflight of every call the pages tried.
await check('preflights', preflights)
apiLog.end()
consoleLog.end()
process.exit(failed ? 1 : 0)
