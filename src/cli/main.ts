/** The CLI: parse options, call the library, print results on stdout, map error codes to exit codes. */
import yargs, { type Argv, type CommandModule } from 'yargs';
import { EXIT_CODES, OcichunkError } from '../errors.js';
import { PartialFailure, terminalText } from './format.js';

interface Cmd {
  command: string;
  describe: string;
  builder: (y: Argv) => Argv<unknown>;
  run: (a: never) => Promise<unknown>;
}

/**
 * The commands in the order help lists them, each loaded when named: a command loads only its own
 * modules (an `ocichunk mount` process under the snapshotter is ~10 MiB smaller without the
 * others' gRPC, conversion and analysis code); help and unknown commands load them all.
 */
const COMMANDS: Array<[name: string, load: () => Promise<unknown>]> = [
  ['convert', () => import('./convert.js')],
  ['restore', () => import('./restore.js')],
  ['verify', () => import('./verify.js')],
  ['inspect', () => import('./inspect.js')],
  ['analyze', () => import('./analyze.js')],
  ['ls', () => import('./lazy.js').then((m) => m.ls)],
  ['cat', () => import('./lazy.js').then((m) => m.cat)],
  ['mount', () => import('./lazy.js').then((m) => m.mount)],
  ['lazy-bench', () => import('./lazy.js').then((m) => m.lazyBenchCmd)],
  ['snapshotter', () => import('./snapshotter.js')],
  ['gc', () => import('./gc.js')],
  ['demo', () => import('./demo.js')],
];

async function commands(argv: string[]): Promise<Cmd[]> {
  const named = COMMANDS.find(([name]) => name === argv[0]);
  return (await Promise.all((named ? [named] : COMMANDS).map(([, load]) => load()))) as Cmd[];
}

/** Options that take `-` for stdin: yargs reads a lone `-` after an option as something else. */
const STDIN_OPTIONS = new Set(['--batch']);

export async function main(args: string[]): Promise<number> {
  let output: unknown;
  let json = false;
  const argv = args.flatMap((a, i) => (a === '-' && STDIN_OPTIONS.has(args[i - 1]) ? [] : STDIN_OPTIONS.has(a) && args[i + 1] === '-' ? [`${a}=-`] : [a]));
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
  for (const c of await commands(argv)) {
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
  const print = (out: unknown) => process.stdout.write(typeof out === 'string' ? out + '\n' : JSON.stringify(out, null, 2) + '\n');
  try {
    await y.parseAsync();
    if (output instanceof PartialFailure) {
      print(output.output);
      throw output.error;
    }
  } catch (e) {
    const err = e instanceof OcichunkError ? e : new OcichunkError('EINTERNAL', (e as Error)?.stack ?? String(e), { cause: e });
    if (json && !(output instanceof PartialFailure))
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
  if (output !== undefined) print(output);
  return 0;
}
