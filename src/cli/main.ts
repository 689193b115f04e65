#!/usr/bin/env node
// The vfio-iommufd command: simulate (the main job, on the embedded simulated kernel), bench
// and probe.
import { Command, CommanderError } from 'commander';
import { InvalidArgumentError, KernelError } from '../kernel/errors.js';
import { linuxKernel } from '../kernel/linux/index.js';
import { registerBenchSync } from './bench-sync.js';
import { printJson, table } from './output.js';
import { registerMigrate } from './migrate.js';
import { probe, simulatedProbeKernel } from './probe.js';
import { registerSimulate } from './simulate.js';
import { UsageError } from './units.js';

const program = new Command('vfio-iommufd')
  .description('Userspace VFIO and iommufd for live migration: containers, auto domains and dirty-page sync')
  .showHelpAfterError()
  .exitOverride();

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

async function main(): Promise<void> {
  try {
    await program.parseAsync(process.argv);
  } catch (error) {
    if (error instanceof CommanderError) process.exit(error.exitCode);
    if (error instanceof UsageError || error instanceof InvalidArgumentError) {
      process.stderr.write(`vfio-iommufd: ${error.message}\n`);
      process.exit(2);
    }
    if (error instanceof KernelError) {
      process.stderr.write(`vfio-iommufd: ${error.message}\n`);
      process.exit(1);
    }
    throw error;
  }
}

await main();
