// tests/browser/run.mjs: runs one headless-Chromium session from a JSON file of steps and
// prints one JSON line of results on stdout.
//
//   node run.mjs steps.json      (after `ensure_browser` from scripts/lib/browser.sh)
//
// steps.json is either a list of steps or an object:
//   {"steps": [...], "viewport": {"width": 1280, "height": 800}, "timeout_ms": 10000,
//    "total_timeout_ms": 60000, "ignore_console_errors": ["substring", ...],
//    "failure_screenshot": "/tmp/failed.png"}
// Each step is {"op": NAME, ...arguments}; timeout_ms on a step overrides the default.
//   goto {url}                          -> {status, url}
//   fill {selector, value}              -> null
//   click {selector}                    -> null
//   wait_for {selector, state?}         -> null  (state: attached|detached|visible|hidden; first match)
//   wait_for_text {selector, text}      -> the text of the first matching element that contains text
//   eval {js}                           -> the value (an expression, or a function source that is
//                                          called; a promise is awaited; must be JSON-serialisable)
//   screenshot {path, selector?}        -> {path, bytes}  (the element's, else the viewport's)
//   drawn_pixels {selector, tolerance?} -> {count, total, width, height, background}: pixels of
//                                          the element's screenshot that differ from its most
//                                          common colour by more than tolerance (0-255) in a channel
//   perf {}                             -> {"first-paint", "first-contentful-paint", navigation,
//                                          marks, measures} (milliseconds from navigation start)
//   cookies {urls?}                     -> the context's cookies, with httpOnly, secure and sameSite
//   expect_no_console_errors {}         -> null, or fails listing them
// Output: {"ok":true,"results":[{"op","ms","value"},...],"console_errors":[...]}, exit 0; or
// {"ok":false,"step":i,"op":...,"error":"...","results":[...],"console_errors":[...]}, exit 1
// ("step" is null when the failure is outside the steps, e.g. at launch). Both also carry
// launch_ms (browser, context and page up) and elapsed_ms. Console messages of type error
// (a 404, favicon.ico included, is one) and uncaught page errors are collected all along.
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const started = Date.now();
const consoleErrors = [];
const results = [];
let browser = null;
let done = false;
let launchMs = null;
let current = { step: null, op: null }; // the step under way, for the total timeout's report

function finish(out, code) {
    if (done) return;
    done = true;
    out.console_errors = consoleErrors;
    out.launch_ms = launchMs;
    out.elapsed_ms = Date.now() - started;
    process.stdout.write(JSON.stringify(out) + '\n');
    const close = browser ? browser.close().catch(() => {}) : Promise.resolve();
    // Never let a stuck browser keep the process (and the test that spawned it) alive.
    Promise.race([close, new Promise((r) => setTimeout(r, 5000))]).then(() => process.exit(code));
}

function fail(step, op, err) {
    const raw = err instanceof Error ? err.message : String(err);
    const error = raw.replace(/\u001b\[[0-9;]*m/g, '').trim(); // playwright colours its call logs
    finish({ ok: false, step, op, error, results }, 1);
}

let plan;
try {
    if (process.argv.length !== 3) throw new Error('usage: node run.mjs <steps.json>');
    plan = JSON.parse(readFileSync(process.argv[2], 'utf8'));
    if (Array.isArray(plan)) plan = { steps: plan };
    if (!plan || !Array.isArray(plan.steps)) throw new Error('the file holds no "steps" list');
} catch (e) {
    fail(null, null, e);
}

if (!done) {
    const totalTimeout = plan.total_timeout_ms ?? 60000;
    setTimeout(() => fail(current.step, current.op, `gave up after total_timeout_ms=${totalTimeout}`), totalTimeout).unref();
    main().catch((e) => fail(null, null, e));
}

async function main() {
    const timeout = plan.timeout_ms ?? 10000;
    const ignored = plan.ignore_console_errors ?? [];
    const executablePath = process.env.VANTAGE_CHROMIUM;
    if (!executablePath) throw new Error('VANTAGE_CHROMIUM is not set (source scripts/lib/browser.sh, call ensure_browser)');
    const t0 = Date.now();
    browser = await chromium.launch({
        executablePath,
        headless: true,
        timeout: 30000,
        args: ['--no-sandbox', '--ignore-certificate-errors', '--disable-gpu', '--disable-dev-shm-usage'],
    });
    const context = await browser.newContext({
        ignoreHTTPSErrors: true,
        viewport: plan.viewport ?? { width: 1280, height: 800 },
        deviceScaleFactor: 1,
    });
    context.setDefaultTimeout(timeout);
    const page = await context.newPage();
    launchMs = Date.now() - t0;
    const noteError = (text) => {
        if (!ignored.some((s) => text.includes(s))) consoleErrors.push(text);
    };
    page.on('console', (msg) => {
        if (msg.type() !== 'error') return;
        const loc = msg.location();
        noteError(loc && loc.url ? `${msg.text()} (${loc.url}:${loc.lineNumber})` : msg.text());
    });
    page.on('pageerror', (err) => noteError(`pageerror: ${err.message}`));
    let scratch = null; // an about:blank page for decoding screenshots, out of reach of the page's CSP

    for (const [i, step] of plan.steps.entries()) {
        const op = step && step.op;
        const t0 = Date.now();
        current = { step: i, op: op ?? null };
        try {
            const value = await runStep(step, step.timeout_ms ?? timeout);
            results.push({ op, ms: Date.now() - t0, value: value === undefined ? null : value });
        } catch (e) {
            if (plan.failure_screenshot) {
                await page.screenshot({ path: plan.failure_screenshot, timeout: 5000 }).catch(() => {});
            }
            return fail(i, op ?? null, e);
        }
    }
    current = { step: null, op: null };
    finish({ ok: true, results }, 0);

    async function runStep(s, timeout) {
        const need = (...keys) => {
            for (const k of keys) if (s[k] === undefined) throw new Error(`${s.op} needs "${k}"`);
        };
        switch (s.op) {
            case 'goto': {
                need('url');
                const resp = await page.goto(s.url, { timeout });
                return { status: resp ? resp.status() : null, url: page.url() };
            }
            case 'fill':
                need('selector', 'value');
                return void (await page.locator(s.selector).fill(String(s.value), { timeout }));
            case 'click':
                need('selector');
                return void (await page.locator(s.selector).click({ timeout }));
            case 'wait_for':
                need('selector');
                return void (await page.locator(s.selector).first().waitFor({ state: s.state ?? 'visible', timeout }));
            case 'wait_for_text': {
                need('selector', 'text');
                const handle = await page.waitForFunction(
                    ([sel, text]) => {
                        for (const el of document.querySelectorAll(sel)) {
                            if ((el.textContent ?? '').includes(text)) return el.textContent;
                        }
                        return false;
                    },
                    [s.selector, String(s.text)],
                    { timeout, polling: 100 },
                );
                return await handle.jsonValue();
            }
            case 'eval': {
                need('js');
                // Evaluated through the DevTools protocol, so the page's CSP (no unsafe-eval) is no bar.
                const handle = await page.evaluateHandle(s.js);
                try {
                    return await handle.evaluate(async (v) => (typeof v === 'function' ? await v() : v));
                } finally {
                    await handle.dispose();
                }
            }
            case 'screenshot': {
                need('path');
                const buf = s.selector
                    ? await page.locator(s.selector).screenshot({ path: s.path, timeout })
                    : await page.screenshot({ path: s.path, timeout });
                return { path: s.path, bytes: buf.length };
            }
            case 'drawn_pixels': {
                need('selector');
                const png = await page.locator(s.selector).screenshot({ timeout });
                if (!scratch) scratch = await context.newPage();
                return await scratch.evaluate(countDrawn, [png.toString('base64'), s.tolerance ?? 0]);
            }
            case 'perf':
                await page
                    .waitForFunction(() => performance.getEntriesByName('first-contentful-paint').length > 0, null, {
                        timeout: Math.min(timeout, 2000),
                    })
                    .catch(() => {}); // a page that paints no content has none: reported as null
                return await page.evaluate(perfEntries);
            case 'cookies':
                return await context.cookies(s.urls);
            case 'expect_no_console_errors':
                if (consoleErrors.length > 0) {
                    throw new Error(`${consoleErrors.length} console error(s): ${consoleErrors.join(' | ')}`);
                }
                return null;
            default:
                throw new Error(`unknown op ${JSON.stringify(s.op)}`);
        }
    }
}

// Runs in the scratch page: decodes a PNG and counts pixels off its most common colour.
async function countDrawn([b64, tolerance]) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }), {
        premultiplyAlpha: 'none',
        colorSpaceConversion: 'none',
    });
    const { width, height } = bitmap;
    const canvas = new OffscreenCanvas(width, height);
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    const data = ctx.getImageData(0, 0, width, height).data;
    const px = new Uint32Array(data.buffer);
    const counts = new Map();
    let bg = 0;
    let best = 0;
    for (const p of px) {
        const n = (counts.get(p) ?? 0) + 1;
        counts.set(p, n);
        if (n > best) [best, bg] = [n, p];
    }
    const b = [bg & 255, (bg >>> 8) & 255, (bg >>> 16) & 255, bg >>> 24]; // little-endian RGBA
    let count = 0;
    for (let i = 0; i < data.length; i += 4) {
        if (
            Math.abs(data[i] - b[0]) > tolerance ||
            Math.abs(data[i + 1] - b[1]) > tolerance ||
            Math.abs(data[i + 2] - b[2]) > tolerance ||
            Math.abs(data[i + 3] - b[3]) > tolerance
        ) {
            count++;
        }
    }
    const hex = '#' + b.map((v) => v.toString(16).padStart(2, '0')).join('');
    return { count, total: px.length, width, height, background: hex };
}

// Runs in the page under test.
function perfEntries() {
    const paint = (name) => {
        const e = performance.getEntriesByName(name, 'paint')[0];
        return e ? e.startTime : null;
    };
    const nav = performance.getEntriesByType('navigation')[0];
    const pick = (e) => ({ name: e.name, startTime: e.startTime, duration: e.duration, detail: e.detail ?? null });
    return {
        'first-paint': paint('first-paint'),
        'first-contentful-paint': paint('first-contentful-paint'),
        navigation: nav ? nav.toJSON() : null,
        marks: performance.getEntriesByType('mark').map(pick),
        measures: performance.getEntriesByType('measure').map(pick),
    };
}
