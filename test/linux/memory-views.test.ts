// Views of host memory after release. On Linux the memory is mmap'd and koffi's views of it are
// external ArrayBuffers that Node 20 does not detach, so a view kept past munmap cannot be made to
// throw: the library hands views out per use (HostMemory.view, refused once released) and the
// README says a view is valid until release(). These tests show each part of that on real mmap
// memory: the refusal, the platform fact behind it, and what a kept view does (SIGSEGV).
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/engine/module.js';
import { InvalidArgumentError } from '../../src/kernel/errors.js';
import { libcSyscalls } from '../../src/kernel/linux/libc.js';
import { MmapMemory } from '../../src/kernel/linux/index.js';
import { simulatedKernel } from '../../src/kernel/sim/index.js';
import type { HostMemory } from '../../src/kernel/types.js';

const PAGE = 4096n;

function refused(action: () => unknown, argument: string): void {
  let caught: unknown;
  try {
    action();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(InvalidArgumentError);
  expect((caught as InvalidArgumentError).argument).toBe(argument);
}

/** The same rules on both kernels' memory: views alias the memory, ranges are checked, release ends them. */
function checkViews(memory: HostMemory): void {
  const whole = memory.view();
  expect(whole.byteLength).toBe(Number(memory.length));
  memory.view(PAGE, 16n).set([1, 2, 3]);
  expect([...whole.subarray(Number(PAGE), Number(PAGE) + 3)]).toEqual([1, 2, 3]);
  expect(memory.bytes![Number(PAGE) + 2]).toBe(3);
  expect(memory.view(memory.length).byteLength).toBe(0);
  refused(() => memory.view(memory.length + 1n), 'offset');
  refused(() => memory.view(PAGE, memory.length), 'length');
  refused(() => memory.view(-1n), 'offset');
  memory.release();
  expect(memory.bytes).toBeUndefined();
  refused(() => memory.view(), 'memory');
  refused(() => memory.view(0n, 16n), 'memory');
}

describe('host memory views after release', () => {
  it('Linux mmap memory: views are per use, refused with InvalidArgumentError once released', () => {
    checkViews(new MmapMemory(libcSyscalls(), 4n * PAGE));
  });

  it('simulated memory refuses the same way', () => {
    const kernel = simulatedKernel({ devices: [] });
    checkViews(kernel.allocateHostMemory(4n * PAGE, { content: true }));
  });

  it('Node 20 does not detach a koffi view: structuredClone with a transfer list copies it', () => {
    // If this starts failing, the platform can detach: release() should then detach its views.
    const memory = new MmapMemory(libcSyscalls(), PAGE);
    try {
      const view = libcSyscalls().view(memory.address, Number(PAGE));
      view[0] = 42;
      const buffer = view.buffer as ArrayBuffer;
      const moved = structuredClone(buffer, { transfer: [buffer] });
      expect(buffer.byteLength).toBe(Number(PAGE)); // not detached
      expect(new Uint8Array(moved)[0]).toBe(42);
      new Uint8Array(moved)[0] = 7; // a copy: the memory is unchanged
      expect(view[0]).toBe(42);
    } finally {
      memory.release();
    }
  });

  it('a view kept past release() is a SIGSEGV on access, not an error (the documented limit)', () => {
    const linux = pathToFileURL(join(packageRoot(), 'dist', 'src', 'kernel', 'linux', 'index.js')).href;
    const script = `
      const { MmapMemory } = await import(${JSON.stringify(linux)});
      const { libcSyscalls } = await import(${JSON.stringify(linux.replace(/index\.js$/, 'libc.js'))});
      const memory = new MmapMemory(libcSyscalls(), 4096n);
      const kept = memory.view();
      kept[0] = 1;
      memory.release();
      process.stdout.write('released\\n');
      kept[0] = 2;
      process.stdout.write('survived\\n');`;
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
    expect(child.stdout).toBe('released\n');
    expect(child.signal).toBe('SIGSEGV');
  });
});
