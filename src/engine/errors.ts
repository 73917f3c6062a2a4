/**
 * Errors a user can act on. `message` is one line that names the problem and the fix; it never
 * contains a password (endpoints are described by `describeEndpoint`, and `redactPasswords`
 * catches a connection string that got into a message anyway).
 */
export class SyncError extends Error {
  constructor(message: string, readonly code: string = 'sync_error') {
    super(redactPasswords(oneLine(message)));
    this.name = 'SyncError';
  }
}

/** `run` refused to start: every failed check, each one line with its fix. */
export class CheckError extends SyncError {
  readonly problems: string[];

  constructor(problems: string[]) {
    super(problems.length === 1 ? problems[0] : `${problems.length} checks failed: ${problems.map((p, i) => `(${i + 1}) ${p}`).join(' ')}`, 'check');
    this.name = 'CheckError';
    this.problems = problems.map(oneLine);
  }
}

interface PgLikeError {
  code?: string;
  message?: string;
  errno?: number;
  routine?: string;
}

/** Turns a driver or server error met while connecting or checking into a SyncError. */
export function explainConnectError(err: unknown, role: string, endpoint: string, user: string, configuredIn = `the --${role} URL`, sslmode = 'prefer'): SyncError {
  const e = (err ?? {}) as PgLikeError;
  const text = oneLine(e.message ?? String(err));
  if (/does not support SSL/i.test(text)) {
    return new SyncError(`the ${role} ${endpoint} does not accept TLS, which sslmode=${sslmode} demands; turn ssl on in its postgresql.conf, or set sslmode=prefer in ${configuredIn} to allow plaintext`, 'tls');
  }
  switch (e.code) {
    case 'ERR_TLS_CERT_ALTNAME_INVALID':
      return new SyncError(`the ${role} ${endpoint}'s TLS certificate is not for that host (${text}); connect by a name the certificate holds, or use sslmode=verify-ca (checks the CA only) in ${configuredIn}`, 'tls');
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'CERT_UNTRUSTED':
    case 'CERT_SIGNATURE_FAILURE':
      return new SyncError(`the ${role} ${endpoint}'s TLS certificate cannot be verified under sslmode=${sslmode} (${text}); set sslrootcert to the CA certificate that signed it in ${configuredIn}, or use sslmode=require to encrypt without verifying`, 'tls');
    case 'CERT_HAS_EXPIRED':
    case 'CERT_NOT_YET_VALID':
      return new SyncError(`the ${role} ${endpoint}'s TLS certificate is out of its validity period (${text}); renew the server's certificate`, 'tls');
    case 'ECONNREFUSED':
      return new SyncError(`cannot connect to the ${role} at ${endpoint}: connection refused; check that PostgreSQL is running there and the host and port in ${configuredIn}`, 'connect');
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new SyncError(`cannot connect to the ${role}: host of ${endpoint} not found; fix the host in ${configuredIn}`, 'connect');
    case 'ETIMEDOUT':
      return new SyncError(`cannot connect to the ${role} at ${endpoint}: timed out; check the host, port and firewall`, 'connect');
    case '28P01':
      return new SyncError(`password authentication failed for user "${user}" on the ${role} ${endpoint}; fix the password in ${configuredIn}, PGPASSWORD or ~/.pgpass`, 'auth');
    case '28000':
      return new SyncError(`the ${role} ${endpoint} refused user "${user}": ${text}; add a pg_hba.conf entry for this host and user (and "replication" for the source)`, 'auth');
    case '3D000':
      return new SyncError(`the ${role} ${endpoint} has no such database: ${text}; fix the database name in ${configuredIn}`, 'connect');
    case '53300':
      return new SyncError(`the ${role} ${endpoint} has no free connection slots; raise max_connections (or max_wal_senders for the source) or close idle sessions`, 'connect');
  }
  if (/client password must be a string|password authentication is required|no password supplied/i.test(text)) {
    return new SyncError(`the ${role} ${endpoint} asks user "${user}" for a password and none was given; put it in ${configuredIn}, PGPASSWORD or ~/.pgpass`, 'auth');
  }
  if (/timeout/i.test(text)) {
    return new SyncError(`cannot connect to the ${role} at ${endpoint}: timed out; check the host, port and firewall`, 'connect');
  }
  return new SyncError(`cannot use the ${role} ${endpoint}: ${text}`, 'connect');
}

export function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ').trim();
}

/**
 * Masks passwords in text that may hold a connection string: the userinfo of a URL
 * (`postgres://u:pw@h`), a `password=` parameter or keyword (quoted or bare).
 */
export function redactPasswords(text: string): string {
  return text
    .replace(/([a-z][a-z0-9+.-]*:\/\/[^\s:/@]*):[^\s@/]*@/gi, '$1:***@')
    .replace(/\b(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&]*)/gi, '$1***');
}

export function errorMessage(err: unknown): string {
  return redactPasswords(oneLine(err instanceof Error ? err.message : String(err)));
}

/**
 * SQLSTATEs that a retry gets past: the server was busy, short of a resource for a moment, or
 * restarting. Apply is exactly-once (the position commits with the changes), so a retry replays
 * from the last committed position and loses or repeats nothing.
 */
const RETRYABLE: Record<string, string> = {
  '40P01': 'deadlock detected',
  '40001': 'serialization failure',
  '55P03': 'lock not available (lock_timeout)',
  '57P01': 'server shut down by an administrator',
  '57P02': 'server crash shutdown',
  '57P03': 'server cannot accept connections now',
  '53100': 'disk full',
  '53200': 'out of memory',
  '53300': 'too many connections',
  // The precheck refuses a slot another run uses; here it is a session still letting go of it
  // (a walsender of a killed run, `status` peeking at a stopped sync's slot).
  '55006': 'replication slot still in use by another session',
};

/** Connection trouble or a transient server condition, as opposed to a problem someone must fix. */
export function isTransient(err: unknown): boolean {
  if (err instanceof SyncError) return err.code === 'connect' || err.code === 'stream_ended';
  const e = (err ?? {}) as PgLikeError;
  if (e.code && (e.code in RETRYABLE || /^(08|ECONN|EPIPE|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|EAI_AGAIN)/.test(e.code))) return true;
  return /Connection terminated|connection timeout|terminating connection|server closed the connection|read ECONNRESET|not queryable|connection error/i.test(e.message ?? '');
}

/** The log line for a transient error about to be retried: what happened and what, if anything, to do. */
export function retryMessage(err: unknown, retry: string): string {
  const code = ((err ?? {}) as PgLikeError).code ?? '';
  const text = errorMessage(err);
  if (code === '53100') return `the target's disk is full (${text}): free space on the target; the sync resumes by itself (${retry}, nothing applied is lost)`;
  const what = code in RETRYABLE ? `${RETRYABLE[code]} (SQLSTATE ${code})` : 'connection lost';
  return `${what}: ${text}; ${retry} (nothing applied is lost)`;
}
