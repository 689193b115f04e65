#!/usr/bin/env node
// Judge and print the results of a harness run.
//   node report.mjs RESULTS_DIR BOOT... [--baseline DIR] [--no-selftests]
// RESULTS_DIR/<boot>/ holds what boot.sh and the guest left: qemu.txt, boot-rc, done, steps.txt,
// selftest-iommufd.tap, selftest-iommufd_fail_nth.tap, vitest.json, console.log.
// Exit: 0 all good; 1 a test failed / a baseline test is missing / a suite did not report;
// 4 a guest timed out, panicked or did not finish.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
const flag = (name) => {
  const i = args.indexOf(name);
  if (i < 0) return false;
  args.splice(i, 1);
  return true;
};
const baselineDir = opt('--baseline') ?? new URL('./baseline/', import.meta.url).pathname;
const noSelftests = flag('--no-selftests');
const [resultsDir, ...boots] = args;
if (!resultsDir || boots.length === 0) {
  console.error('usage: report.mjs RESULTS_DIR BOOT... [--baseline DIR] [--no-selftests]');
  process.exit(2);
}

const EXIT_TESTS_FAILED = 1;
const EXIT_GUEST = 4;
let exitCode = 0;
const problems = [];
const fail = (code, msg) => {
  exitCode = Math.max(exitCode, code);
  problems.push(msg);
};
const read = (p) => (existsSync(p) ? readFileSync(p, 'utf8') : undefined);
const out = [];
const say = (s = '') => out.push(s);

/** kselftest harness TAP: "ok 3 fixture.variant.test", "not ok 7 ...", "# SKIP" / "# XFAIL" directives. */
function parseTap(text) {
  const results = new Map();
  let planned;
  let totals;
  for (const line of text.split('\n')) {
    const m = /^(ok|not ok) (\d+) (\S+)(?:\s+#\s*(SKIP|XFAIL|XPASS|TODO)\b.*)?$/i.exec(line);
    if (m) {
      const status = m[4] ? m[4].toUpperCase() : m[1] === 'ok' ? 'pass' : 'fail';
      results.set(m[3], status === 'XFAIL' ? 'xfail' : status === 'SKIP' ? 'skip' : status === 'XPASS' ? 'fail' : status);
      continue;
    }
    const p = /^1\.\.(\d+)/.exec(line);
    if (p) planned = Number(p[1]);
    const t = /^# Totals: (.*)$/.exec(line);
    if (t) totals = t[1];
  }
  return { results, planned, totals };
}

function readBaseline(program) {
  const text = read(join(baselineDir, `${program}.txt`));
  if (text === undefined) return { names: new Set(), file: undefined };
  const names = new Set(
    text
      .split('\n')
      .map((l) => l.replace(/#.*/, '').trim())
      .filter(Boolean),
  );
  return { names, file: join(baselineDir, `${program}.txt`) };
}

function steps(dir) {
  const m = new Map();
  for (const line of (read(join(dir, 'steps.txt')) ?? '').split('\n')) {
    const [name, rc, secs] = line.trim().split(/\s+/);
    if (name) m.set(name, { rc: Number(rc), secs: Number(secs) });
  }
  return m;
}

function reportSelftest(boot, dir, step, program, stepInfo) {
  const label = `${boot}: ${program}`;
  const text = read(join(dir, `selftest-${program}.tap`));
  if (text === undefined || !stepInfo) {
    say(`  ${program}: did not run`);
    fail(EXIT_TESTS_FAILED, `${label} did not run`);
    return;
  }
  const { results, planned, totals } = parseTap(text);
  const counts = { pass: 0, fail: 0, skip: 0, xfail: 0 };
  for (const s of results.values()) counts[s] = (counts[s] ?? 0) + 1;
  const { names: baseline, file: baselineFile } = readBaseline(program);
  const failed = [...results].filter(([, s]) => s === 'fail').map(([n]) => n);
  const newFailures = failed.filter((n) => !baseline.has(n));
  const baselineFailures = failed.filter((n) => baseline.has(n));
  const missing = [...baseline].filter((n) => !results.has(n));
  const fixed = [...baseline].filter((n) => results.get(n) === 'pass');
  say(
    `  ${program}: pass ${counts.pass} fail ${counts.fail}` +
      (counts.skip ? ` skip ${counts.skip}` : '') +
      (counts.xfail ? ` xfail ${counts.xfail}` : '') +
      ` (of ${planned ?? '?'} planned; ${stepInfo.secs.toFixed(1)} s` +
      (stepInfo.rc === 124 ? ', TIMED OUT' : `, exit ${stepInfo.rc}`) +
      ')',
  );
  if (totals) say(`    kselftest totals: ${totals}`);
  if (baselineFailures.length) {
    say(`    ${baselineFailures.length} known failures from the baseline (${baselineFile}):`);
    for (const n of baselineFailures) say(`      not ok (baseline) ${n}`);
  }
  for (const n of newFailures) say(`    NEW FAILURE  ${n}`);
  for (const n of missing) say(`    MISSING (in the baseline, not in the output)  ${n}`);
  for (const n of fixed) say(`    now passes, remove from the baseline: ${n}`);
  if (newFailures.length) fail(EXIT_TESTS_FAILED, `${label}: ${newFailures.length} failures outside the baseline`);
  if (missing.length) fail(EXIT_TESTS_FAILED, `${label}: ${missing.length} baseline tests missing from the output`);
  if (planned !== undefined && results.size < planned)
    fail(EXIT_TESTS_FAILED, `${label}: ${results.size} of ${planned} planned tests reported`);
  if (stepInfo.rc === 124) fail(EXIT_TESTS_FAILED, `${label} timed out`);
  else if (stepInfo.rc !== 0 && newFailures.length === 0 && failed.length === 0)
    fail(EXIT_TESTS_FAILED, `${label} exited ${stepInfo.rc} without failing tests`);
  return { counts, newFailures, baselineFailures };
}

const suiteByTest = new Map(); // fullName (file > name) -> { boot: status }

function reportSuite(boot, dir, stepInfo) {
  const label = `${boot}: kernel suite`;
  const json = read(join(dir, 'vitest.json'));
  if (json === undefined || !stepInfo) {
    say(`  kernel suite: no results${stepInfo ? ` (exit ${stepInfo.rc}; see ${join(dir, 'vitest.log')})` : ' (did not run or did not finish)'}`);
    fail(EXIT_TESTS_FAILED, `${label} did not report`);
    return;
  }
  const r = JSON.parse(json);
  const c = { passed: 0, failed: 0, skipped: 0, todo: 0 };
  const failures = [];
  for (const file of r.testResults ?? []) {
    const rel = file.name.replace(/^.*?\/test\/kernel\//, 'test/kernel/');
    if ((file.assertionResults ?? []).length === 0 && file.status === 'failed') {
      failures.push(`${rel}: ${String(file.message ?? 'failed to load').split('\n')[0]}`);
      c.failed++;
    }
    for (const a of file.assertionResults ?? []) {
      const status = a.status === 'pending' ? 'skipped' : a.status;
      c[status] = (c[status] ?? 0) + 1;
      const key = `${rel} > ${a.fullName}`;
      if (!suiteByTest.has(key)) suiteByTest.set(key, {});
      suiteByTest.get(key)[boot] = status;
      if (status === 'failed') failures.push(`${key}: ${String(a.failureMessages?.[0] ?? '').split('\n')[0]}`);
    }
  }
  say(
    `  kernel suite: ${c.passed + c.failed + c.skipped + c.todo} tests in ${(r.testResults ?? []).length} files: ` +
      `${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped` +
      (c.todo ? `, ${c.todo} todo` : '') +
      ` (${stepInfo.secs.toFixed(1)} s, exit ${stepInfo.rc}${stepInfo.rc === 124 ? ', TIMED OUT' : ''})`,
  );
  for (const f of failures) say(`    FAILED  ${f}`);
  // test/kernel/fail-nth.test.ts: the kernel's fail_nth on the library's own call paths.
  const failNth = read(join(dir, 'library-fail-nth.json'));
  if (failNth !== undefined) {
    const f = JSON.parse(failNth);
    say(`  library fail_nth: ${f.paths} call paths, ${f.injectionPoints} injection points, ${f.leaked} leaked`);
    for (const p of f.results) say(`    ${p.backend}: ${p.name}: ${p.injectionPoints} points (${p.survived} survived)${p.leaked ? `, ${p.leaked} LEAKED` : ''}`);
    if (f.leaked) fail(EXIT_TESTS_FAILED, `${label}: library fail_nth leaked ${f.leaked} times`);
  }
  if (failures.length) fail(EXIT_TESTS_FAILED, `${label}: ${failures.length} failed`);
  if (stepInfo.rc !== 0 && failures.length === 0)
    fail(EXIT_TESTS_FAILED, `${label}: vitest exited ${stepInfo.rc} (see ${join(dir, 'vitest.log')})`);
}

/** The mtty migrations of test/kernel/mtty-migration.test.ts (virtio boot), summed into one line. */
function reportMtty(boot, dir) {
  const json = read(join(dir, 'mtty-migration.json'));
  if (json === undefined) return;
  const runs = JSON.parse(json).runs ?? [];
  const transitions = runs.reduce((sum, run) => sum + run.transitions, 0);
  const saved = runs.reduce((sum, run) => sum + run.bytesSaved, 0);
  const restored = runs.reduce((sum, run) => sum + run.bytesRestored, 0);
  const equal = runs.length > 0 && runs.every((run) => run.equal) && saved === restored;
  say(`  device migration (mtty): ${transitions} state transitions, ${saved} bytes saved and ${saved === restored ? 'restored' : `${restored} restored`}, ` +
    `destination state ${equal ? 'equal' : 'DIFFERENT'} (${runs.map((run) => run.path).join(', ')})`);
  if (!equal) fail(EXIT_TESTS_FAILED, `${boot}: mtty migration: destination state differs or bytes saved != restored`);
}

/** The PCI hot resets of test/kernel/hot-reset.test.ts (both boots), one line per backend. */
function reportHotReset(dir) {
  const json = read(join(dir, 'hot-reset.json'));
  if (json === undefined) return;
  for (const run of JSON.parse(json).runs ?? []) {
    say(`  hot reset (${run.backend}): VFIO_DEVICE_PCI_HOT_RESET succeeded on ${run.device} behind ${run.bridge}; ` +
      `affected devices: ${run.affected.join(', ')} (flags 0x${run.flags.toString(16)})`);
  }
}

/** `vfio-iommufd bench ioctl` in the guest (test/kernel/bench-ioctl.test.ts): its table, as the CLI prints it. */
function reportBenchIoctl(dir) {
  const text = read(join(dir, 'bench-ioctl.txt'));
  if (text === undefined) return;
  say('  bench ioctl (vfio-iommufd bench ioctl, test/kernel/bench-ioctl.test.ts):');
  for (const line of text.trimEnd().split('\n')) say(`    ${line}`);
}

const summary = { resultsDir, boots: {} };
for (const boot of boots) {
  const dir = join(resultsDir, boot);
  const qemu = Object.fromEntries(
    (read(join(dir, 'qemu.txt')) ?? '')
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map((kv) => kv.split('=')),
  );
  const console_ = read(join(dir, 'console.log')) ?? '';
  const done = existsSync(join(dir, 'done'));
  const panic = /Kernel panic/.test(console_);
  const oopses = console_.split('\n').filter((l) => /\b(Oops|BUG:|WARNING:|Kernel panic)/.test(l));
  say(`== boot ${boot} (${boot === 'intel' ? 'intel-iommu, interrupt remapping' : 'virtio-iommu'}): ` +
    (qemu.seconds ? `${qemu.seconds} s` : 'no timing') +
    (done ? ', guest finished' : panic ? ', KERNEL PANIC' : qemu.qemu_rc === '124' ? ', TIMED OUT' : ', guest DID NOT FINISH'));
  if (!done) fail(EXIT_GUEST, `${boot}: ${panic ? 'kernel panic' : qemu.qemu_rc === '124' ? `timed out after ${qemu.seconds} s` : 'guest did not finish'} (console: ${join(dir, 'console.log')})`);
  for (const l of oopses.slice(0, 10)) say(`  kernel: ${l.trim()}`);
  if (oopses.some((l) => /Oops|BUG:/.test(l))) fail(EXIT_TESTS_FAILED, `${boot}: kernel Oops/BUG in the console`);
  const st = steps(dir);
  const planned = (read(join(dir, 'guest-config.sh')) ?? '').match(/^GUEST_STEPS=(.*)$/m)?.[1]?.replace(/['\\]/g, '').split(',') ?? [];
  if (planned.includes('selftest')) reportSelftest(boot, dir, 'selftest', 'iommufd', st.get('selftest'));
  if (planned.includes('failnth')) reportSelftest(boot, dir, 'failnth', 'iommufd_fail_nth', st.get('failnth'));
  if (planned.includes('suite')) reportSuite(boot, dir, st.get('suite'));
  reportMtty(boot, dir);
  reportHotReset(dir);
  reportBenchIoctl(dir);
  summary.boots[boot] = { qemu, done, panic, steps: Object.fromEntries(st) };
}

if (boots.length > 1 && suiteByTest.size) {
  const neverRan = [...suiteByTest].filter(([, by]) => Object.values(by).every((s) => s === 'skipped')).map(([k]) => k);
  say(`== kernel suite across boots (${boots.join(', ')}): ${suiteByTest.size} tests, ${neverRan.length} skipped in every boot`);
  for (const k of neverRan) say(`    SKIPPED IN EVERY BOOT  ${k}`);
  if (neverRan.length) fail(EXIT_TESTS_FAILED, `kernel suite: ${neverRan.length} tests ran in no boot`);
}
if (noSelftests) say('   (selftests not run: no selftest binaries for this kernel)');

say(exitCode === 0 ? 'RESULT: PASS' : `RESULT: FAIL\n${problems.map((p) => `  - ${p}`).join('\n')}`);
say(`results: ${resultsDir}`);
summary.exitCode = exitCode;
summary.problems = problems;
writeFileSync(join(resultsDir, 'summary.json'), JSON.stringify(summary, null, 2));
writeFileSync(join(resultsDir, 'summary.txt'), out.join('\n') + '\n');
console.log(out.join('\n'));
process.exit(exitCode);
