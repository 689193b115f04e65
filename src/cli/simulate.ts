// `vfio-iommufd simulate`: the main job, a live migration of a simulated guest on the embedded
// simulated kernel.
import { availableParallelism } from 'node:os';
import type { Command } from 'commander';
import { printJson, progress, table } from './output.js';
import { addReportOption, migrationPage, reportPath, writeReport } from './report.js';
import { MAX_ENGINE_WORKERS, parseDeviceOption, simulateMigration, WORKLOADS, type SimulatedDeviceOption, type WorkloadName } from './simulation.js';
import { formatBytes, parseCount, parseDuration, parseRate, parseSize, UsageError } from './units.js';

interface SimulateFlags {
  guestMemory: string;
  device: string[];
  workload: string;
  dirtyRate: string;
  bandwidth: string;
  downtime: string;
  seed: string;
  workers: string;
  maxRounds: string;
  json?: boolean;
  report?: string;
}

const DEFAULT_DEVICES = ['nic0:iommu-dirty', 'gpu0:dma-logging'];

export function registerSimulate(program: Command): void {
  const command = program
    .command('simulate')
    .description('live-migrate a simulated guest with assigned devices on the embedded simulated kernel, checking every round against the ground truth')
    .option('--guest-memory <size>', 'guest memory', '64GiB')
    .option('--device <name:spec>', `a device, repeatable; spec words joined by +: iommu-dirty, dma-logging, mdev, legacy, migration (default: ${DEFAULT_DEVICES.join(' ')})`, (value: string, all: string[]) => [...all, value], [] as string[])
    .option('--workload <kind>', `guest write pattern: ${WORKLOADS.join('|')}`, 'hotset')
    .option('--dirty-rate <rate>', 'bytes the guest writes per second', '100MiB/s')
    .option('--bandwidth <rate>', 'migration link bandwidth', '10Gbit/s')
    .option('--downtime <duration>', 'downtime limit', '300ms')
    .option('--seed <n>', 'workload seed', '1')
    .option('--workers <n>', 'engine worker threads', String(availableParallelism()))
    .option('--max-rounds <n>', 'precopy rounds before giving up', '30')
    .option('--json', 'print one JSON document');
  addReportOption(command).action(async (flags: SimulateFlags) => {
      const report = reportPath(flags.report);
      if (!WORKLOADS.includes(flags.workload as WorkloadName)) throw new UsageError(`--workload: ${JSON.stringify(flags.workload)} is not one of ${WORKLOADS.join(', ')}`);
      const devices: SimulatedDeviceOption[] = (flags.device.length ? flags.device : DEFAULT_DEVICES).map(parseDeviceOption);
      const maxRounds = parseCount('--max-rounds', flags.maxRounds);
      // Every flag is parsed before any work, so a bad one is a usage error with nothing done.
      const parsed = {
        guestMemory: parseSize('--guest-memory', flags.guestMemory),
        devices,
        workload: flags.workload as WorkloadName,
        dirtyRate: parseRate('--dirty-rate', flags.dirtyRate),
        bandwidth: parseRate('--bandwidth', flags.bandwidth),
        downtimeMs: parseDuration('--downtime', flags.downtime),
        seed: parseCount('--seed', flags.seed, 0),
        workers: parseCount('--workers', flags.workers, 0, MAX_ENGINE_WORKERS, 'the most worker threads the engine runs'),
        maxRounds,
      };
      const bar = progress(maxRounds, 'precopy', !flags.json);
      let result;
      try {
        result = await simulateMigration({
          ...parsed,
          onRound: (round) => bar.update(round.round, `${round.kind}, ${formatBytes(round.dirtyPages * 4096)} dirty`),
        });
      } finally {
        bar.stop();
      }
      if (report) {
        const given = process.argv.slice(process.argv.indexOf('simulate') + 1).filter((a) => a !== '--report' && a !== flags.report && a !== '--json');
        await writeReport(report, migrationPage('vfio-iommufd simulate', result, given));
      }
      // Lost pages are a failed check whichever way the result is printed.
      if (result.summary.lostPages > 0) process.exitCode = 1;
      if (flags.json) return printJson(result);
      const lines: string[] = [];
      lines.push(`guest ${formatBytes(result.guestBytes)}; devices: ${result.devices.map((d) => `${d.name} (${d.tracker})`).join(', ')}`);
      for (const container of result.topology.containers) {
        if (container.backend === 'iommufd') {
          const hwpts = container.hwpts.map((h) => `HWPT ${h.id}${h.dirtyTracking ? ' [dirty tracking]' : ''}: ${h.devices.join(', ')}`);
          lines.push(`  iommufd IOAS ${container.ioasId}: ${[...hwpts, ...(container.ioasDevices.length ? [`on the IOAS: ${container.ioasDevices.join(', ')}`] : [])].join('; ')}`);
        } else {
          lines.push(`  legacy type1 container: ${container.devices.join(', ')}`);
        }
      }
      lines.push(table(
        ['round', 'kind', 'dirty pages', 'newly dirty', 'sent', 'device state pending/sent', 'dirty rate', 'query ms', 'merge ms', 'scan ms', 'lost'],
        result.rounds.map((r) => [
          r.round, r.kind, r.dirtyPages, r.newlyDirtyPages, formatBytes(r.sentPages * result.pageSize),
          `${formatBytes(r.deviceStatePendingBytes)} / ${formatBytes(r.deviceStateSentBytes)}`, `${formatBytes(r.dirtyRateBytesPerSecond)}/s`,
          r.phases.queryMs.toFixed(2), r.phases.mergeMs.toFixed(2), r.phases.scanMs.toFixed(2), r.lostPages,
        ]),
      ));
      const s = result.summary;
      lines.push(s.converged ? `converged after ${s.rounds} rounds` : `did not converge: ${s.reason}`);
      lines.push(`predicted downtime: ${s.predictedDowntimeMs === null ? '-' : `${s.predictedDowntimeMs.toFixed(1)} ms`}; simulated downtime: ${s.simulatedDowntimeMs === null ? '-' : `${s.simulatedDowntimeMs.toFixed(1)} ms`}`);
      lines.push(`total sent: ${formatBytes(s.totalSentBytes)} (device state ${formatBytes(s.deviceStateBytes)})`);
      lines.push(`lost pages: ${s.lostPages}`);
      process.stdout.write(`${lines.join('\n')}\n`);
    });
}
