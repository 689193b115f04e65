// Output rules of every command: `--json` prints one JSON document on stdout; humans get
// tables (cli-table3); progress goes to stderr, only on a TTY (cli-progress).
import { SingleBar, Presets } from 'cli-progress';
import Table from 'cli-table3';

export function printJson(document: unknown): void {
  process.stdout.write(`${JSON.stringify(document, (_, value) => (typeof value === 'bigint' ? value.toString() : value), 2)}\n`);
}

export function table(head: string[], rows: (string | number)[][]): string {
  const t = new Table({ head, style: { head: [], border: [] } });
  for (const row of rows) t.push(row.map(String));
  return t.toString();
}

export interface Progress {
  update(value: number, label?: string): void;
  stop(): void;
}

/** A progress bar on stderr when it is a terminal and not --json; otherwise nothing. */
export function progress(total: number, label: string, enabled = true): Progress {
  if (!enabled || !process.stderr.isTTY) return { update() {}, stop() {} };
  const bar = new SingleBar({ format: `${label} [{bar}] {value}/{total} {label}`, stream: process.stderr, hideCursor: true }, Presets.shades_classic);
  bar.start(total, 0, { label: '' });
  return {
    update: (value, text) => bar.update(value, { label: text ?? '' }),
    stop: () => bar.stop(),
  };
}
