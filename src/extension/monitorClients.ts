import type pg from 'pg';
import { connect, type Endpoint } from '../engine/connection';

const IDLE_CLOSE_MS = 60_000;

/**
 * The monitor's connections, kept open between polls: reading a sync's state every two seconds
 * must not mean a new server session (and a log_connections line) every two seconds. A client
 * that errors is dropped and reopened on the next use; one unused for a minute is closed.
 */
export class MonitorClients {
  private readonly clients = new Map<string, { client: Promise<pg.Client>; lastUsed: number }>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(private readonly applicationName = 'pg_live_sync_monitor') {
    this.sweeper = setInterval(() => this.closeIdle(), IDLE_CLOSE_MS);
    this.sweeper.unref();
  }

  async use<T>(endpoint: Endpoint, fn: (client: pg.Client) => Promise<T>): Promise<T> {
    // The URL (with its password) is the key, so an edited connection gets a new session.
    const key = endpoint.url;
    let entry = this.clients.get(key);
    if (!entry) {
      const client = connect(endpoint, { applicationName: this.applicationName }).then((c) => {
        c.on('error', () => this.drop(key));
        return c;
      });
      entry = { client, lastUsed: Date.now() };
      this.clients.set(key, entry);
    }
    entry.lastUsed = Date.now();
    try {
      return await fn(await entry.client);
    } catch (err) {
      this.drop(key);
      throw err;
    }
  }

  private drop(key: string): void {
    const entry = this.clients.get(key);
    if (!entry) return;
    this.clients.delete(key);
    void entry.client.then((c) => c.end()).catch(() => undefined);
  }

  private closeIdle(): void {
    for (const [key, entry] of this.clients) if (Date.now() - entry.lastUsed > IDLE_CLOSE_MS) this.drop(key);
  }

  dispose(): void {
    clearInterval(this.sweeper);
    for (const key of [...this.clients.keys()]) this.drop(key);
  }
}
