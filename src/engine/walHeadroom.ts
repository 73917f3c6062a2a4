/**
 * How close a slot is to being invalidated by max_slot_wal_keep_size. Pure (a type import only),
 * so the CLI, the extension and the progress panel judge it the same way.
 */
import type { SlotInfo } from './slot';

/** Within this long, or this fraction of the limit, of invalidation, a slot is at risk. */
const RISK_SECONDS = 3600;
const RISK_HEADROOM_FRACTION = 0.2;

/** Bytes per second the source wrote between two readings of a slot, or null when unknown. */
export function walWriteRate(before: { at: number; slot: SlotInfo } | null, after: { at: number; slot: SlotInfo }): number | null {
  if (!before || after.at <= before.at || after.slot.sourceWalLsn < before.slot.sourceWalLsn) return null;
  return Number(after.slot.sourceWalLsn - before.slot.sourceWalLsn) / ((after.at - before.at) / 1000);
}

/** Seconds until the slot is invalidated at this write rate: null when it cannot be (no limit) or the rate is unknown. */
export function secondsToInvalidation(slot: Pick<SlotInfo, 'safeWalBytes'>, bytesPerSecond: number | null): number | null {
  if (slot.safeWalBytes === null) return null;
  if (slot.safeWalBytes <= 0) return 0;
  if (bytesPerSecond === null || bytesPerSecond <= 0) return null;
  return slot.safeWalBytes / bytesPerSecond;
}

export function invalidationAtRisk(safeWalBytes: number | null, walKeepBytes: number | null, seconds: number | null): boolean {
  if (seconds !== null && seconds < RISK_SECONDS) return true;
  return safeWalBytes !== null && walKeepBytes !== null && safeWalBytes < walKeepBytes * RISK_HEADROOM_FRACTION;
}
