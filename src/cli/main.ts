/** The CLI: parse options, call the library, print results on stdout, map error codes to exit codes. */
import yargs, { type Argv, type CommandModule } from 'yargs';
import { EXIT_CODES, OcichunkError } from '../errors.js';
import { terminalText } from './format.js';
import * as analyzeCmd from './analyze.js';
import * as convertCmd from './convert.js';
import * as demoCmd from './demo.js';
import * as gcCmd from './gc.js';
import * as inspectCmd from './inspect.js';
import { cat as catCmd, lazyBenchCmd, ls as lsCmd, mount as mountCmd } from './lazy.js';
import * as restoreCmd from './restore.js';
import * as snapshotterCmd from './snapshotter.js';
import * as verifyCmd from './verify.js';

interface Cmd {
  command: string;
  describe: string;
  builder: (y: Argv) => Argv<unknown>;
  run: (a: never) => Promise<unknown>;
}

const COMMANDS: Cmd[] = [
  convertCmd,
  restoreCmd,
  verifyCmd,
  inspectCmd,
  analyzeCmd,
  lsCmd,
  catCmd,
  mountCmd,
  lazyBenchCmd,
  snapshotterCmd,
  gcCmd,
  demoCmd,
] as unknown as Cmd[];

export async function main(argv: string[]): Promise<number> {
  let output: unknown;
  let json = false;
  let y = yargs(argv)
    .scriptName('ocichunk')
    .strict()
    .demandCommand(1, 'name a command')
    .recommendCommands()
    .help()
    .version(false)
    .fail((msg, err) => {
      throw err ?? new OcichunkError('EUSAGE', msg);
    });
  for (const c of COMMANDS) {
    const mod: CommandModule = {
      command: c.command,
      describe: c.describe,
      builder: c.builder as CommandModule['builder'],
      handler: async (args) => {
        json = !!(args as { json?: boolean }).json;
        output = await c.run(args as never);
      },
    };
    y = y.command(mod);
  }
  try {
    await y.parseAsync();
  } catch (e) {
    const err = e instanceof OcichunkError ? e : new OcichunkError('EINTERNAL', (e as Error)?.stack ?? String(e), { cause: e });
    if (json)
      process.stdout.write(
        JSON.stringify({ error: { code: err.code, message: err.message, ...(err.details ? { details: err.details } : {}) } }, null, 2) + '\n',
      );
    // messages may quote the image (names, tags, annotations): no control character reaches the
    // terminal raw (a stack trace keeps its lines)
    const safe = (s: string) => terminalText(s, err.code === 'EINTERNAL');
    process.stderr.write(`ocichunk: ${safe(err.message)}\n`);
    if (!json) for (const d of err.details ?? []) process.stderr.write(`  ${safe(d)}\n`);
    if (err.code === 'EUSAGE') process.stderr.write('run "ocichunk --help" for usage\n');
    return EXIT_CODES[err.code];
  }
  if (output !== undefined) {
    process.stdout.write(typeof output === 'string' ? output + '\n' : JSON.stringify(output, null, 2) + '\n');
  }
  return 0;
}
