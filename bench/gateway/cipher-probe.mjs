// Preload (node --import / NODE_OPTIONS=--import=…) that reports what every ssh2 Client in this
// process negotiated, as one stderr line: BENCH_NEGOTIATED {"kex","cs","sc"}. The benchmark uses it
// on the real `broker tunnel` CLI and on the service process, without touching src/.
import ssh2 from 'ssh2';

const orig = ssh2.Client.prototype.connect;
ssh2.Client.prototype.connect = function (cfg) {
  this.once('handshake', (n) =>
    process.stderr.write(
      `BENCH_NEGOTIATED ${JSON.stringify({ kex: n.kex, cs: n.cs?.cipher, sc: n.sc?.cipher })}\n`,
    ),
  );
  return orig.call(this, cfg);
};
