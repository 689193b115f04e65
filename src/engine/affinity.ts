// Pins the calling thread to one CPU of the process's own affinity set (Linux, through libc's
// sched_getaffinity/sched_setaffinity with pid 0: the calling thread). The pool's workers are
// woken together by one message; left to the scheduler, both often wake on the waker's CPU and
// share it for milliseconds before the load balancer moves one (`bench sync` at 1 TiB: a 2-worker
// scan took 11 ms or 22 ms from round to round, 13 to 15 ms once each worker had its own CPU).
import koffi from 'koffi';

const MASK_BYTES = 128; // 1024 CPUs, as glibc's cpu_set_t

let calls: { get: (pid: number, size: number, mask: Uint8Array) => number; set: (pid: number, size: number, mask: Uint8Array) => number } | undefined;

/**
 * Pins this thread to the `slot`-th CPU (modulo their number) that the process may run on.
 * Returns that CPU, or undefined when the platform or the calls do not allow it (nothing changes).
 */
export function pinThreadToSlot(slot: number): number | undefined {
  if (process.platform !== 'linux') return undefined;
  try {
    if (!calls) {
      const libc = koffi.load('libc.so.6');
      const get = libc.func('int sched_getaffinity(int pid, size_t size, _Out_ uint8_t *mask)');
      const set = libc.func('int sched_setaffinity(int pid, size_t size, const uint8_t *mask)');
      calls = { get: (p, s, m) => get(p, s, m) as number, set: (p, s, m) => set(p, s, m) as number };
    }
    const cpus = threadCpus();
    if (!cpus || cpus.length < 2) return undefined;
    const cpu = cpus[slot % cpus.length]!;
    const mask = new Uint8Array(MASK_BYTES);
    mask[cpu >> 3] = 1 << (cpu & 7);
    return calls.set(0, MASK_BYTES, mask) === 0 ? cpu : undefined;
  } catch {
    return undefined;
  }
}

/** The CPUs this thread may run on now (after pinThreadToSlot loaded the calls; the tests read it). */
export function threadCpus(): number[] | undefined {
  if (process.platform !== 'linux' || !calls) return undefined;
  const allowed = new Uint8Array(MASK_BYTES);
  if (calls.get(0, MASK_BYTES, allowed) !== 0) return undefined;
  const cpus: number[] = [];
  for (let cpu = 0; cpu < MASK_BYTES * 8; cpu++) if (allowed[cpu >> 3]! & (1 << (cpu & 7))) cpus.push(cpu);
  return cpus;
}
