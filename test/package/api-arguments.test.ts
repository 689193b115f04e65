// Wrong arguments from JavaScript callers get a typed InvalidArgumentError, never a TypeError
// from deep inside, and change nothing.
import { describe, expect, it } from 'vitest';
import { AddressSpace, InvalidArgumentError, simulatedKernel } from '../../src/index.js';

describe('argument checks at the public surface', () => {
  const kernel = () => simulatedKernel({ devices: [{ name: 'nic0', iommuDirtyTracking: true }] });

  it('map(null), unmap(null) and detach(undefined) reject with InvalidArgumentError and leave the space as it was', async () => {
    const space = new AddressSpace(kernel());
    await space.map({ iova: 0n, size: 1n << 21n });
    await expect(space.map(null as never)).rejects.toThrow(InvalidArgumentError);
    await expect(space.unmap(null as never)).rejects.toThrow(InvalidArgumentError);
    await expect(space.detach(undefined as never)).rejects.toThrow(/device: must be a Device or the name/);
    expect(space.mappings).toHaveLength(1);
    await space.close();
  });

  it('a Number pageSize is refused by name', () => {
    expect(() => new AddressSpace(kernel(), { pageSize: 4096 as never })).toThrow(new InvalidArgumentError('pageSize', 'must be a bigint (4096n), got number 4096'));
  });

  it('close() twice is a no-op the second time', async () => {
    const space = new AddressSpace(kernel());
    await space.map({ iova: 0n, size: 1n << 21n });
    await space.attach('nic0');
    await space.close();
    await expect(space.close()).resolves.toBeUndefined();
    await expect(space.map({ iova: 0n, size: 1n << 21n })).rejects.toThrow(/is closed/);
  });

  it('simulatedKernel refuses a misspelt option and a devices value that is not an array', () => {
    expect(() => simulatedKernel({ device: [] } as never)).toThrow(/unknown option device \(known: devices, iommufdTest, hostPageSize, systemPageSize\)/);
    expect(() => simulatedKernel({ devices: 'nic0' } as never)).toThrow(InvalidArgumentError);
    expect(() => simulatedKernel({ devices: 'nic0' } as never)).toThrow(/devices: must be an array/);
    expect(() => simulatedKernel({ hostPageSize: 4096 } as never)).toThrow(/hostPageSize: must be a bigint/);
  });
});
