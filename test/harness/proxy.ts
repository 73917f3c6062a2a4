/**
 * A local TCP proxy for fault tests: listens on a free port on 127.0.0.1 and forwards every
 * connection to `targetPort`. `cut()` drops every current connection (both ends get a reset, as
 * on a network fault); `pause()` refuses new connections (accepted and reset at once, counted in
 * `refused`) until `resume()`. `blackHole()` and `halfOpen()` leave connections open that carry
 * nothing, as a network path that dies does.
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
  /**
   * Every current connection stops carrying anything and neither end is told; one end closing
   * (a killed client) leaves the other open. New connections are forwarded as usual.
   */
  blackHole(): void;
  /**
   * blackHole(), then the client ends are reset: the client's side gave up on the connection
   * (keepalive, a timeout) while the server's still holds its session.
   */
  halfOpen(): void;
  /** New connections are reset as soon as they are accepted. */
  pause(): void;
  resume(): void;
  /** Cuts everything and stops listening. */
  close(): Promise<void>;
}

export async function startProxy(targetPort: number, targetHost = '127.0.0.1'): Promise<Proxy> {
  type Link = { client: net.Socket; upstream: net.Socket; end: () => void };
  const links = new Set<Link>();
  /** Black-holed: closed only by close(). */
  const stranded = new Set<Link>();
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
    const end = () => {
      links.delete(link);
      client.destroy();
      upstream.destroy();
    };
    const link = { client, upstream, end };
    links.add(link);
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

  const blackHole = (): Link[] => {
    const holed = [...links];
    for (const link of holed) {
      const { client, upstream, end } = link;
      client.unpipe(upstream);
      upstream.unpipe(client);
      client.off('close', end);
      upstream.off('close', end);
      // Read and drop: what either side sends is lost.
      client.resume();
      upstream.resume();
      links.delete(link);
      stranded.add(link);
    }
    return holed;
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
    blackHole() {
      blackHole();
    },
    halfOpen() {
      for (const { client } of blackHole()) reset(client);
    },
    pause() {
      paused = true;
    },
    resume() {
      paused = false;
    },
    async close() {
      paused = true;
      cut();
      for (const { client, upstream } of stranded) {
        reset(client);
        reset(upstream);
      }
      stranded.clear();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
