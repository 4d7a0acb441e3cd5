// Drives one page in Chromium for the Rust tests (tests/src/browser.rs):
// one JSON command per line on stdin, one JSON answer per line on stdout.
// playwright-core is loaded from the directory of $PLAYWRIGHT_CORE_CLI and
// launches $CHROMIUM (Debian's); it downloads nothing.
"use strict";
const path = require("path");
const readline = require("readline");
const { chromium } = require(path.dirname(process.env.PLAYWRIGHT_CORE_CLI));

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const dialogs = [];
  const errors = [];
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    d.dismiss().catch(() => {});
  });
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  const answer = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);
  answer({ ready: true });
  for await (const line of readline.createInterface({ input: process.stdin })) {
    let cmd;
    try {
      cmd = JSON.parse(line);
      let value = null;
      switch (cmd.op) {
        case "goto":
          await page.goto(cmd.url);
          break;
        case "eval":
          value = await page.evaluate(cmd.js);
          break;
        case "focus":
          await page.focus(cmd.selector);
          break;
        case "press":
          await page.keyboard.press(cmd.key);
          break;
        case "viewport":
          await page.setViewportSize({ width: cmd.width, height: cmd.height });
          break;
        case "screenshot":
          await page.screenshot({ path: cmd.path, fullPage: Boolean(cmd.full) });
          break;
        case "log":
          value = { dialogs, errors };
          break;
        case "close":
          await browser.close();
          answer({ value: null });
          return;
        default:
          throw new Error(`unknown op ${JSON.stringify(cmd.op)}`);
      }
      answer({ value: value === undefined ? null : value });
    } catch (e) {
      answer({ error: String((e && e.stack) || e) });
    }
  }
  await browser.close();
}

main().catch((e) => {
  process.stderr.write(`driver failed: ${(e && e.stack) || e}\n`);
  process.exit(1);
});
