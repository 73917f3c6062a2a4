/**
 * A local TCP proxy for fault tests: listens on a free port on 127.0.0.1 and forwards every
 * connection to `targetPort`. `cut()` drops every current connection (both ends get a reset, as
 * on a network fault); `pause()` refuses new connections (accepted and reset at once, counted in
 * `refused`) until `resume()`.
 */
import net from 'node:net';

export interface Proxy {
  readonly port: number;
  /** Connections forwarded so far. */
  readonly accepted: number;
  /** Connection attempts reset while paused, with the time of each (ms since the epoch). */
  readonly refused: number;
  readonly refusedAt: readonly number[];
  /** Connections currently forwarded. */
  readonly open: number;
  /** Destroys every current connection, both sides, with a TCP reset. */
  cut(): void;
  /** New connections are reset as soon as they are accepted. */
  pause(): void;
  resume(): void;
  /** Cuts everything and stops listening. */
  close(): Promise<void>;
}

export async function startProxy(targetPort: number, targetHost = '127.0.0.1'): Promise<Proxy> {
  const links = new Set<{ client: net.Socket; upstream: net.Socket }>();
  let paused = false;
  let accepted = 0;
  const refusedAt: number[] = [];

  const reset = (s: net.Socket) => {
    if (s.destroyed) return;
    try {
      s.resetAndDestroy();
    } catch {
      s.destroy();
    }
  };

  const server = net.createServer((client) => {
    client.on('error', () => undefined);
    if (paused) {
      refusedAt.push(Date.now());
      reset(client);
      return;
    }
    accepted++;
    const upstream = net.connect(targetPort, targetHost);
    upstream.on('error', () => undefined);
    const link = { client, upstream };
    links.add(link);
    const end = () => {
      links.delete(link);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end);
    upstream.on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as net.AddressInfo).port;

  const cut = () => {
    for (const { client, upstream } of [...links]) {
      reset(client);
      reset(upstream);
    }
    links.clear();
  };

  return {
    port,
    get accepted() {
      return accepted;
    },
    get refused() {
      return refusedAt.length;
    },
    get refusedAt() {
      return refusedAt;
    },
    get open() {
      return links.size;
    },
    cut,
    pause() {
      paused = true;
    },
    resume() {
      paused = false;
    },
    async close() {
      paused = true;
      cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
