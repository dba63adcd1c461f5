/** broker cert: a short-lived client certificate for mTLS, with the key made on this machine. */
import { join } from 'node:path';
import type { Command } from 'commander';
import type { Action } from '../main.js';
import { ensurePrivateDirectory, writeFileSafely } from '../../host/safe-files.js';
import { client, printJson } from '../util.js';

export function define(program: Command, action: Action): void {
  program
    .command('cert')
    .description('get a short-lived client certificate from the broker CA (mTLS to https services)')
    .option(
      '--out-dir <dir>',
      'write key.pem (0600), cert.pem and ca.pem here (created 0700; refused if others can write it)',
      '.',
    )
    .option('--principal <name>', 'whose certificate (admins; default: yourself)')
    .option('--json', 'print {"cert","ca","fingerprint","notAfter","dir"}')
    .addHelpText(
      'after',
      `
Examples:
  broker cert --out-dir ~/.broker-mtls
  curl --cacert ~/.broker-mtls/ca.pem --cert ~/.broker-mtls/cert.pem --key ~/.broker-mtls/key.pem https://localhost:20007/

The private key is generated here and never sent; the broker signs a CSR. The certificate names
you (CN = your principal) and lasts as long as a client key (12 h by default).`,
    )
    .action(
      action(async (io, opts: { outDir: string; principal?: string; json?: boolean }) => {
        const { newLocalKey, csrFor } = await import('../../server-sdk/csr.js');
        const dir = ensurePrivateDirectory(opts.outDir); // FS-5, before asking the broker
        const broker = client(io);
        const who = opts.principal ?? (await broker.selfName());
        const key = await newLocalKey();
        const res = await broker.clientCert(who, await csrFor(key));
        broker.close();
        writeFileSafely(join(dir, 'key.pem'), key.keyPem, 0o600);
        writeFileSafely(join(dir, 'cert.pem'), res.cert, 0o644);
        writeFileSafely(join(dir, 'ca.pem'), res.ca, 0o644);
        if (opts.json) printJson(io, { ...res, dir });
        else
          io.stdout.write(
            `client certificate for ${who} in ${dir} (expires ${res.notAfter}, ${res.fingerprint})\n`,
          );
        return 0;
      }),
    );
}
