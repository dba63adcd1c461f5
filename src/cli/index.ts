import { main } from './main.js';
import { processIo } from './io.js';

// Whoever reads our output went away (`broker audit | head`): stop quietly, like a filter in a
// pipeline, instead of dying on an unhandled EPIPE with a stack trace.
for (const stream of [process.stdout, process.stderr])
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });

const code = await main(process.argv.slice(2), processIo());
process.exitCode = code;
