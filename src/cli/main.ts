#!/usr/bin/env node
// The vfio-iommufd command: simulate (the main job, on the embedded simulated kernel), bench
// and probe.
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { EngineInputError } from '../engine/errors.js';
import { InvalidArgumentError, KernelError } from '../kernel/errors.js';
import { linuxKernel } from '../kernel/linux/index.js';
import { registerBenchIoctl } from './bench-ioctl.js';
import { registerBenchSync } from './bench-sync.js';
import { printJson, table } from './output.js';
import { registerMigrate } from './migrate.js';
import { probe, simulatedProbeKernel } from './probe.js';
import { registerSimulate } from './simulate.js';
import { UsageError } from './units.js';

// Exit codes: 0 success, 1 a failed migration or check (lost pages, a kernel error), 2 a usage
// error, commander's own (unknown option or command, missing value) included.
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;

// dist/src/cli/main.js -> the package root, in the repository and in an installed package alike.
const { version } = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
const debug = process.argv.includes('--debug');

/** One line on stderr; the stack only with --debug. */
function fail(error: unknown, code: number, prefix = ''): never {
  const message = error instanceof Error ? error.message : String(error);
  process.stderr.write(`vfio-iommufd: ${prefix}${message.split('\n')[0]}\n`);
  if (debug && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
  process.exit(code);
}

const program = new Command('vfio-iommufd')
  .description('Userspace VFIO and iommufd for live migration: containers, auto domains and dirty-page sync')
  .version(version, '-V, --version', 'print the version')
  .option('--debug', 'print the stack of an error')
  // Set before the commands are added: subcommands inherit both.
  .exitOverride()
  .configureOutput({
    // Commander's errors as one line like ours: "vfio-iommufd: unknown option '--bogus' (see --help)".
    outputError: (text, write) => write(`vfio-iommufd: ${text.replace(/^error: /, '').trim().split('\n')[0]} (see --help)\n`),
  });

registerSimulate(program);
registerMigrate(program);

program
  .command('probe')
  .description('what this host has for VFIO and iommufd, and what to do about what is missing')
  .option('--json', 'print one JSON document')
  .option('--simulated', 'probe the embedded simulated kernel instead of this host')
  .option('--device <name:spec>', 'with --simulated: a simulated device, repeatable (as simulate --device)', (value: string, all: string[]) => [...all, value], [] as string[])
  .action((options: { json?: boolean; simulated?: boolean; device: string[] }) => {
    const report = probe({ kernel: options.simulated ? simulatedProbeKernel(options.device) : linuxKernel() });
    if (options.json) return printJson(report);
    const lines = [
      `kernel ${report.kernel}: /dev/iommu ${report.iommufd.present ? (report.iommufd.accessible ? 'usable' : 'present, not accessible') : 'missing'}, ` +
        `/dev/vfio/vfio ${report.legacyContainer.present ? (report.legacyContainer.accessible ? 'usable' : 'present, not accessible') : 'missing'}, ` +
        `${report.iommuGroups} IOMMU groups`,
    ];
    if (!report.vfio) lines.push('This host has no VFIO: nothing to probe. The simulated kernel runs everything: vfio-iommufd simulate');
    if (report.devices.length) {
      lines.push(table(['device', 'driver', 'group', 'cdev', 'IOMMU', 'address bits', 'IOMMU dirty', 'DMA logging', 'problems'], report.devices.map((d) => [
        d.name, d.driver ?? '-', d.group ?? '-', d.cdev ?? '-', d.iommuType ?? '-', d.addressWidth ?? '-',
        d.iommuDirtyTracking === undefined ? '?' : d.iommuDirtyTracking ? 'yes' : 'no',
        d.dmaLogging === undefined ? '?' : d.dmaLogging ? 'yes' : 'no', d.problems.join('; ') || '-',
      ])));
    }
    for (const advice of report.advice) lines.push(`- ${advice}`);
    process.stdout.write(`${lines.join('\n')}\n`);
  });

const bench = program.command('bench').description('benchmarks that print figures and ratios against references measured in the same run');
(await import('./bench-engine.js')).registerBenchEngine(bench);
registerBenchSync(bench);
(await import('./bench-crossover.js')).registerBenchCrossover(bench);
registerBenchIoctl(bench);

async function main(): Promise<void> {
  try {
    await program.parseAsync(process.argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      // --help and --version exit 0; every parse error is a usage error.
      process.exit(error.exitCode === 0 ? 0 : EXIT_USAGE);
    }
    if (error instanceof UsageError || error instanceof InvalidArgumentError || error instanceof EngineInputError) fail(error, EXIT_USAGE);
    if (error instanceof KernelError) fail(error, EXIT_FAILED);
    fail(error, EXIT_FAILED, 'internal error: ');
  }
}

await main();
