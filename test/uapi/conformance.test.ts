// Layout conformance: a C program compiled against the real Linux 6.12 uAPI headers prints every
// ioctl number, struct size and field offset of UAPI_TABLE; all of them must match.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { UAPI_TABLE, VFIO_MIGRATION_CONSTANTS, dmaLoggingMaxRanges } from '../../src/uapi/index.js';

const here = dirname(fileURLToPath(import.meta.url));
const inCi = process.env.CI === 'true';

function headersDir(): string | undefined {
  const result = spawnSync('bash', [join(here, 'kernel-headers.sh')], { encoding: 'utf8', env: process.env });
  if (result.status !== 0) {
    if (inCi) throw new Error(`kernel headers could not be installed:\n${result.stderr}`);
    return undefined;
  }
  return result.stdout.trim().split('\n').pop();
}

const hasGcc = spawnSync('gcc', ['--version']).status === 0;
const include = hasGcc ? headersDir() : undefined;
const checkable = Boolean(include);

/** Fields and structs added after 6.12: listed, not compiled. */
const newer = UAPI_TABLE.since;
function isNewer(struct: string, field?: string): boolean {
  return struct in newer || (field !== undefined && `${struct}.${field}` in newer);
}

function cProgram(): string {
  const lines = [
    '#include <stdio.h>',
    '#include <stddef.h>',
    '#include <linux/types.h>',
    '#include <linux/iommufd.h>',
    '#include <linux/vfio.h>',
    '#include <linux/iommufd_test.h>',
    // Anonymous inner structs of iommu_test_cmd's union: offsetof reaches them by member path.
    'int main(void) {',
  ];
  for (const name of Object.keys(VFIO_MIGRATION_CONSTANTS)) lines.push(`  printf("constant %s %lu\\n", "${name}", (unsigned long)${name});`);
  for (const name of Object.keys(UAPI_TABLE.ioctls)) {
    if (isNewer(name)) continue;
    lines.push(`  printf("ioctl %s %lu\\n", "${name}", (unsigned long)${name});`);
  }
  for (const [struct, layout] of Object.entries(UAPI_TABLE.structs)) {
    if (isNewer(struct) || !/^(iommu_|vfio_)/.test(struct)) continue;
    const firstNewer = Object.entries(layout.offsets).find(([field]) => isNewer(struct, field));
    // A struct that grew after 6.12 is checked at its 6.12 size: the offset where the new fields start.
    lines.push(`  printf("size %s %lu\\n", "${struct}", (unsigned long)sizeof(struct ${struct}));`);
    for (const field of Object.keys(layout.offsets)) {
      if (isNewer(struct, field)) continue;
      lines.push(`  printf("offset %s.%s %lu\\n", "${struct}", "${field}", (unsigned long)offsetof(struct ${struct}, ${field}));`);
    }
    if (firstNewer) lines.push(`  /* ${struct}: fields from ${firstNewer[0]} on are newer than 6.12 */`);
  }
  lines.push('  return 0;', '}');
  return lines.join('\n');
}

function expected(): Map<string, number> {
  const out = new Map<string, number>();
  for (const [name, value] of Object.entries(VFIO_MIGRATION_CONSTANTS)) out.set(`constant ${name}`, value);
  for (const [name, value] of Object.entries(UAPI_TABLE.ioctls)) if (!isNewer(name)) out.set(`ioctl ${name}`, value);
  for (const [struct, layout] of Object.entries(UAPI_TABLE.structs)) {
    if (isNewer(struct)) continue;
    const firstNewer = Object.entries(layout.offsets).find(([field]) => isNewer(struct, field));
    out.set(`size ${struct}`, firstNewer ? firstNewer[1] : layout.size);
    for (const [field, offset] of Object.entries(layout.offsets)) if (!isNewer(struct, field)) out.set(`offset ${struct}.${field}`, offset);
  }
  return out;
}

describe('UAPI_TABLE against the Linux 6.12 headers', () => {
  it.skipIf(!checkable && !inCi)('matches every ioctl number, struct size and field offset compiled by gcc', () => {
    expect(include, 'kernel headers (test/uapi/kernel-headers.sh)').toBeDefined();
    const dir = mkdtempSync(join(tmpdir(), 'uapi-'));
    writeFileSync(join(dir, 'layout.c'), cProgram());
    execFileSync('gcc', ['-std=gnu11', '-Wall', '-Werror', '-I', include!, '-o', join(dir, 'layout'), join(dir, 'layout.c')], { stdio: 'pipe' });
    const output = execFileSync(join(dir, 'layout'), { encoding: 'utf8' });
    const actual = new Map<string, number>();
    for (const line of output.trim().split('\n')) {
      const [kind, key, value] = line.split(' ');
      actual.set(`${kind} ${key}`, Number(value));
    }
    const want = expected();
    const mismatches: string[] = [];
    for (const [key, value] of want) {
      if (actual.get(key) !== value) mismatches.push(`${key}: table ${value}, headers ${actual.get(key)}`);
    }
    const ioctls = [...want.keys()].filter((k) => k.startsWith('ioctl ')).length;
    const fields = [...want.keys()].filter((k) => k.startsWith('offset ')).length;
    const structs = [...want.keys()].filter((k) => k.startsWith('size ')).length;
    const constants = [...want.keys()].filter((k) => k.startsWith('constant ')).length;
    console.log(
      `uAPI conformance: checked ${ioctls} ioctls, ${structs} struct sizes, ${fields} field offsets, ${constants} migration constants against Linux 6.12 headers; ` +
        `${mismatches.length} mismatches. Not checkable against 6.12 (newer): ${Object.entries(newer).map(([k, v]) => `${k} (${v})`).join(', ')}`,
    );
    expect(mismatches).toEqual([]);
    expect(actual.size).toBe(want.size);
    expect(ioctls).toBeGreaterThan(40);
    expect(fields).toBeGreaterThan(200);
    expect(constants).toBe(Object.keys(VFIO_MIGRATION_CONSTANTS).length);
  });

  it.skipIf(!checkable && !inCi)('dmaLoggingMaxRanges is LOG_MAX_RANGES (PAGE_SIZE / sizeof the range struct) at 4, 16 and 64 KiB pages', () => {
    expect(include, 'kernel headers (test/uapi/kernel-headers.sh)').toBeDefined();
    const dir = mkdtempSync(join(tmpdir(), 'uapi-'));
    const pages = [4096, 16384, 65536];
    // drivers/vfio/vfio_main.c: #define LOG_MAX_RANGES (PAGE_SIZE / sizeof(struct vfio_device_feature_dma_logging_range))
    writeFileSync(join(dir, 'ranges.c'), [
      '#include <stdio.h>', '#include <linux/types.h>', '#include <linux/vfio.h>', 'int main(void) {',
      ...pages.map((page) => `  printf("%lu\\n", (unsigned long)(${page}UL / sizeof(struct vfio_device_feature_dma_logging_range)));`),
      '  return 0;', '}',
    ].join('\n'));
    execFileSync('gcc', ['-std=gnu11', '-Wall', '-Werror', '-I', include!, '-o', join(dir, 'ranges'), join(dir, 'ranges.c')], { stdio: 'pipe' });
    const fromHeader = execFileSync(join(dir, 'ranges'), { encoding: 'utf8' }).trim().split('\n').map(Number);
    expect(pages.map((page) => dmaLoggingMaxRanges(page))).toEqual(fromHeader);
    expect(fromHeader[2]).toBe(4096);
  });
});
