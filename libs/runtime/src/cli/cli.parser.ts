import { parseArgs } from 'node:util';
import { CliUsageError } from './cli.format';

/**
 * A small command-table parser over Node's built-in `util.parseArgs`. commander 15 is ESM-only: Node 20
 * can `require()` it only from 20.19 on, and jest's CommonJS module system cannot load it at all on Node
 * 20, so the CLI stays on what Node ships.
 */

/** One `--flag`. Flags are shared by name across commands and must keep one type. */
export interface OptionSpec {
  name: string;
  type: 'string' | 'boolean';
  /** Placeholder shown in help for a string option, e.g. `size`. */
  value?: string;
  description: string;
  default?: string | boolean;
  /** Allowed values of a string option; anything else is a usage error. */
  choices?: readonly string[];
}

/** A command: its words (`template build-busybox`), its arguments (`<name> [snap] <command...>`). */
export interface CommandSpec<R> {
  name: string;
  args: string;
  description: string;
  options?: readonly OptionSpec[];
  run: R;
}

export type OptionValues = Record<string, string | boolean | undefined>;

export type ParseOutcome<R> =
  | { kind: 'help'; text: string }
  | {
      kind: 'run';
      command: CommandSpec<R>;
      /** Declared arguments by name; a variadic one is a string array. */
      args: Record<string, string | string[] | undefined>;
      /** Global and command options, defaults applied. */
      options: OptionValues;
    };

interface ArgSpec {
  name: string;
  required: boolean;
  variadic: boolean;
}

function argSpecs(spec: string): ArgSpec[] {
  return spec
    .split(' ')
    .filter(Boolean)
    .map((word) => ({
      name: word.replace(/[<>[\]]|\.{3}/g, ''),
      required: word.startsWith('<'),
      variadic: word.includes('...'),
    }));
}

const HELP: OptionSpec = { name: 'help', type: 'boolean', description: 'show help' };

/**
 * Parses `argv` (without node and script) against the command table. Global options may stand before or
 * after the command; everything after `--` is positional (so `exec web1 -- ps -o pid` passes `-o` on).
 * Returns the help text for `--help` / `-h`.
 * @throws CliUsageError for an unknown command or option, a missing or extra argument, an option of
 *   another command, a missing option value or a value outside its choices.
 */
export function parseCommandLine<R>(
  argv: readonly string[],
  globals: readonly OptionSpec[],
  commands: readonly CommandSpec<R>[],
): ParseOutcome<R> {
  const known = new Map<string, OptionSpec>();
  for (const o of [...globals, HELP, ...commands.flatMap((c) => c.options ?? [])]) {
    if (known.get(o.name) && known.get(o.name)!.type !== o.type) {
      throw new Error(`CLI definition error: --${o.name} has two types`);
    }
    known.set(o.name, o);
  }
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: Object.fromEntries(
        [...known.values()].map((o) => [
          o.name,
          o.name === 'help' ? { type: 'boolean' as const, short: 'h' } : { type: o.type },
        ]),
      ),
      allowPositionals: true,
      strict: true,
      tokens: true,
    });
  } catch (e) {
    throw new CliUsageError((e as Error).message.split('\n')[0]);
  }
  const { values, positionals, tokens } = parsed;
  const command = commands
    .filter((c) => c.name.split(' ').every((word, i) => positionals[i] === word))
    .sort((a, b) => b.name.split(' ').length - a.name.split(' ').length)[0];

  if (values.help) {
    return { kind: 'help', text: command ? commandHelp(command, globals) : programHelp(globals, commands) };
  }
  if (!command) {
    if (positionals.length === 0) throw new CliUsageError('no command given (see --help)');
    const group = commands.filter((c) => c.name.startsWith(`${positionals[0]} `)).map((c) => c.name);
    throw new CliUsageError(
      group.length
        ? `unknown command '${positionals.slice(0, 2).join(' ')}': use ${group.join(', ')}`
        : `unknown command '${positionals[0]}' (see --help)`,
    );
  }

  const allowed = new Map([...globals, ...(command.options ?? [])].map((o) => [o.name, o]));
  for (const t of tokens ?? []) {
    if (t.kind === 'option' && !allowed.has(t.name)) {
      throw new CliUsageError(`unknown option '${t.rawName}' for ${command.name}`);
    }
  }
  const options: OptionValues = {};
  for (const o of allowed.values()) {
    const v = values[o.name];
    const value = Array.isArray(v) ? v[v.length - 1] : (v ?? o.default);
    if (o.choices && typeof value === 'string' && !o.choices.includes(value)) {
      throw new CliUsageError(`--${o.name} must be one of ${o.choices.join(', ')}, got ${value}`);
    }
    options[o.name] = value;
  }

  const rest = positionals.slice(command.name.split(' ').length);
  const args: Record<string, string | string[] | undefined> = {};
  const specs = argSpecs(command.args);
  for (const spec of specs) {
    if (spec.variadic) {
      if (spec.required && rest.length === 0)
        throw new CliUsageError(`${command.name}: missing <${spec.name}>`);
      args[spec.name] = rest.splice(0);
    } else {
      const value = rest.shift();
      if (spec.required && value === undefined)
        throw new CliUsageError(`${command.name}: missing <${spec.name}>`);
      args[spec.name] = value;
    }
  }
  if (rest.length > 0) throw new CliUsageError(`${command.name}: unexpected argument '${rest[0]}'`);
  return { kind: 'run', command, args, options };
}

function optionLines(options: readonly OptionSpec[]): string[] {
  const left = (o: OptionSpec): string =>
    o.name === 'help' ? '-h, --help' : `--${o.name}${o.type === 'string' ? ` <${o.value ?? 'value'}>` : ''}`;
  const width = Math.max(...options.map((o) => left(o).length));
  return options.map((o) => {
    const extra = [
      o.choices ? `one of ${o.choices.join('|')}` : '',
      o.default !== undefined && o.default !== false ? `default ${String(o.default)}` : '',
    ]
      .filter(Boolean)
      .join(', ');
    return `  ${left(o).padEnd(width)}  ${o.description}${extra ? ` (${extra})` : ''}`;
  });
}

function programHelp<R>(globals: readonly OptionSpec[], commands: readonly CommandSpec<R>[]): string {
  const heads = commands.map(
    (c) => `${c.name}${c.args ? ` ${c.args}` : ''}${c.options?.length ? ' [options]' : ''}`,
  );
  const width = Math.max(...heads.map((h) => h.length));
  return [
    'Usage: berth-runtime [global options] <command> [options]',
    '',
    'Operate the containers of this host directly through libs/runtime (no API, no worker).',
    '',
    'Commands:',
    ...commands.map((c, i) => `  ${heads[i].padEnd(width)}  ${c.description}`),
    '',
    'Global options:',
    ...optionLines([...globals, HELP]),
    '',
    'Errors print one line "error: <CODE>: <message>" on stderr and exit 1 (2 for usage errors).',
    '',
  ].join('\n');
}

function commandHelp<R>(command: CommandSpec<R>, globals: readonly OptionSpec[]): string {
  return [
    `Usage: berth-runtime ${command.name}${command.args ? ` ${command.args}` : ''} [options]`,
    '',
    command.description,
    '',
    ...(command.options?.length ? ['Options:', ...optionLines(command.options), ''] : []),
    'Global options:',
    ...optionLines([...globals, HELP]),
    '',
  ].join('\n');
}
