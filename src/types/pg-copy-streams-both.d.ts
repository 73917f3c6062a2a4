// @types/pg-copy-streams predates `both()` (CopyBoth, used for START_REPLICATION).
import type { Connection, Submittable } from 'pg';
import type { Duplex, DuplexOptions } from 'stream';

declare module 'pg-copy-streams' {
  export class CopyBothQueryStream extends Duplex implements Submittable {
    text: string;
    submit(connection: Connection): void;
  }
  export function both(txt: string, options?: DuplexOptions & { alignOnCopyDataFrame?: boolean }): CopyBothQueryStream;
}
