// Fault injection and tracing for the simulated kernel's ioctls, so that layers above can prove
// they unwind every step when any one fails (make the n-th call of an ioctl fail, in turn).
import { ERRNO, errnoCode, type ErrnoCode } from '../errno.js';
import { InvalidArgumentError, KernelError, type KernelObjects } from '../errors.js';

/** One call into the simulated kernel. */
export interface IoctlCall {
  /** The ioctl as the kernel spells it (`IOMMU_HWPT_ALLOC`), or `open` for opening a device node. */
  readonly ioctl: string;
  readonly objects: KernelObjects;
  readonly fd: number;
}

export interface IoctlRecord extends IoctlCall {
  /** 0 on success; the errno otherwise (-1 for a non-kernel exception). */
  errno: number;
  /** True when the failure was injected. */
  injected: boolean;
}

export type ErrnoLike = ErrnoCode | number;

export interface FailNextOptions {
  /** Let this many matching calls succeed first (default 0: the very next one fails). */
  readonly after?: number;
  /** Fail this many matching calls in a row (default 1). */
  readonly times?: number;
  /** Only calls whose objects match all these values count. */
  readonly objects?: KernelObjects;
}

interface Rule {
  readonly matches: (call: IoctlCall) => ErrnoLike | undefined;
  skip: number;
  remaining: number;
}

function toErrno(errno: ErrnoLike): number {
  if (typeof errno === 'number') {
    if (!Number.isInteger(errno) || errno <= 0) throw new InvalidArgumentError('errno', `must be a positive errno number, got ${errno}`);
    return errno;
  }
  const value = ERRNO[errno];
  if (value === undefined) throw new InvalidArgumentError('errno', `unknown errno ${String(errno)}`);
  return value;
}

/** A recording of ioctl calls, from startTrace() until stop(). */
export class IoctlTrace {
  readonly records: IoctlRecord[] = [];
  private stopped = false;

  constructor(private readonly onStop: (trace: IoctlTrace) => void) {}

  /** The ioctl names in call order, failures suffixed with their errno code (`IOMMU_HWPT_ALLOC!EOPNOTSUPP`). */
  get summary(): string[] {
    return this.records.map((record) => (record.errno === 0 ? record.ioctl : `${record.ioctl}!${record.errno < 0 ? 'exception' : errnoCode(record.errno)}`));
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.onStop(this);
  }
}

export class FaultInjector {
  private rules: Rule[] = [];
  private readonly traces = new Set<IoctlTrace>();
  private readonly counts = new Map<string, number>();
  private current: IoctlRecord | undefined;

  failNext(ioctl: string, errno: ErrnoLike, options: FailNextOptions = {}): void {
    const value = toErrno(errno);
    const after = options.after ?? 0;
    const times = options.times ?? 1;
    if (!Number.isInteger(after) || after < 0) throw new InvalidArgumentError('after', `must be a non-negative integer, got ${after}`);
    if (!Number.isInteger(times) || times < 1) throw new InvalidArgumentError('times', `must be a positive integer, got ${times}`);
    const wanted = options.objects;
    this.rules.push({
      matches: (call) => {
        if (call.ioctl !== ioctl) return undefined;
        if (wanted && Object.entries(wanted).some(([key, v]) => call.objects[key] !== v)) return undefined;
        return value;
      },
      skip: after,
      remaining: times,
    });
  }

  /** Fail every call for which `decide` returns an errno, until the returned function is called. */
  failWhen(decide: (call: IoctlCall) => ErrnoLike | undefined): () => void {
    const rule: Rule = { matches: decide, skip: 0, remaining: Number.POSITIVE_INFINITY };
    this.rules.push(rule);
    return () => {
      this.rules = this.rules.filter((other) => other !== rule);
    };
  }

  clear(): void {
    this.rules = [];
  }

  /** Pending injected failures (failNext rules not yet used up). */
  get pending(): number {
    return this.rules.filter((rule) => Number.isFinite(rule.remaining)).length;
  }

  count(ioctl?: string): number {
    if (ioctl !== undefined) return this.counts.get(ioctl) ?? 0;
    let total = 0;
    for (const value of this.counts.values()) total += value;
    return total;
  }

  startTrace(): IoctlTrace {
    const trace = new IoctlTrace((stopped) => this.traces.delete(stopped));
    this.traces.add(trace);
    return trace;
  }

  enter(call: IoctlCall): void {
    this.counts.set(call.ioctl, (this.counts.get(call.ioctl) ?? 0) + 1);
    const record: IoctlRecord = { ...call, errno: 0, injected: false };
    for (const trace of this.traces) trace.records.push(record);
    this.current = record;
    for (const rule of this.rules) {
      const errno = rule.matches(call);
      if (errno === undefined) continue;
      if (rule.skip > 0) {
        rule.skip--;
        continue;
      }
      rule.remaining--;
      if (rule.remaining <= 0) this.rules = this.rules.filter((other) => other !== rule);
      record.errno = toErrno(errno);
      record.injected = true;
      this.current = undefined;
      throw new KernelError(call.ioctl, record.errno, call.objects);
    }
  }

  leave(errno: number): void {
    if (this.current) this.current.errno = errno;
    this.current = undefined;
  }
}
