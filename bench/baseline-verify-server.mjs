// Baseline for the verify benchmark: bare node:https doing what verify must do — parse the body,
// SHA-256 the bearer token and the key, two primary-key lookups in SQLite (WAL, FULL), one
// timingSafeEqual each — and nothing else. Prints its port on stdout.
import { createServer } from 'node:https';
import { createHash, timingSafeEqual } from 'node:crypto';
import Database from 'better-sqlite3';

const [certPem, keyPem, dbPath, serviceToken, key] = JSON.parse(process.argv[2]);
const sha = (s) => createHash('sha256').update(s).digest();
const db = new Database(dbPath);
db.pragma('journal_mode = WAL');
db.pragma('synchronous = FULL');
db.exec(
  'CREATE TABLE IF NOT EXISTS svc (hash BLOB PRIMARY KEY, id TEXT); CREATE TABLE IF NOT EXISTS k (hash BLOB PRIMARY KEY, svc TEXT, principal TEXT, expires INTEGER)',
);
db.prepare('INSERT OR REPLACE INTO svc VALUES (?, ?)').run(sha(serviceToken), 'svc_1');
db.prepare('INSERT OR REPLACE INTO k VALUES (?, ?, ?, ?)').run(
  sha(key),
  'svc_1',
  'alice',
  Date.now() + 3600e3,
);
const svcBy = db.prepare('SELECT * FROM svc WHERE hash = ?');
const keyBy = db.prepare('SELECT * FROM k WHERE hash = ?');

const server = createServer({ cert: certPem, key: keyPem, minVersion: 'TLSv1.2' }, (req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const auth = (req.headers.authorization || '').slice(7);
    const th = sha(auth);
    const s = svcBy.get(th);
    if (!s || !timingSafeEqual(s.hash, th)) {
      res.writeHead(401);
      return res.end('{}');
    }
    const body = JSON.parse(Buffer.concat(chunks).toString());
    const kh = sha(body.key);
    const row = keyBy.get(kh);
    const ok =
      !!row && timingSafeEqual(row.hash, kh) && row.svc === s.id && row.expires > Date.now();
    const text = JSON.stringify(ok ? { valid: true, principal: row.principal } : { valid: false });
    res.writeHead(200, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
    });
    res.end(text);
  });
});
server.listen(0, '127.0.0.1', () => process.stdout.write(String(server.address().port) + '\n'));
