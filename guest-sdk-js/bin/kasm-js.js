#!/usr/bin/env node
// kasm-js: build JavaScript and TypeScript kasm handlers into components.

import { statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { BuildError, JS_CAPABILITIES, build, resolveProject } from '../build/build.js';
import * as world from '../build/world.js';

const USAGE = `usage: kasm-js build [SOURCE] [options]   build a handler into a .wasm component
       kasm-js world [SOURCE] [options]   print the narrow world a handler is built against

SOURCE: a .js or .ts file, or a project folder with a package.json (default: .)

options:
  -c, --capability NAME  a capability the handler uses (repeatable; replaces "kasm": { "capabilities" }):
                         ${JS_CAPABILITIES.join(', ')}
  -m, --main FILE        the module that calls handler()
  -o, --output FILE      the component to write (default: ./<name>.wasm)
  -n, --name NAME        the component's name (default: the package's)
      --wit DIR          folder of the kasm:handler WIT package (default: the copy shipped with kasm-guest)
  -q, --quiet            print errors only
  -h, --help             this text`;

async function main(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        capability: { type: 'string', short: 'c', multiple: true },
        main: { type: 'string', short: 'm' },
        output: { type: 'string', short: 'o' },
        name: { type: 'string', short: 'n' },
        wit: { type: 'string' },
        quiet: { type: 'boolean', short: 'q' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (error) {
    console.error(`kasm-js: error: ${error.message}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const [command, source = '.', ...rest] = positionals;
  if (!['build', 'world'].includes(command) || rest.length > 0) {
    console.error(`kasm-js: error: ${command ? `unknown command or extra arguments: ${positionals.join(' ')}` : 'no command'}\n\n${USAGE}`);
    return 2;
  }
  try {
    const project = resolveProject(source, {
      capabilities: values.capability,
      main: values.main,
      name: values.name,
    });
    const wit = values.wit ? resolve(values.wit) : world.shippedWit();
    if (command === 'world') {
      if (!statSync(wit).isDirectory()) throw new BuildError(`${wit}: not a folder`);
      const text = await readFile(join(wit, 'handler.wit'), 'utf8');
      process.stdout.write(world.narrow(text, project.capabilities));
      return 0;
    }
    const output = resolve(values.output ?? `${project.name}.wasm`);
    const took = await build(project, output, { wit });
    if (!values.quiet) {
      const size = statSync(output).size;
      console.log(
        `kasm-js: built ${output} (${(size / 1e6).toFixed(1)} MB) in ${took.toFixed(1)} s; ` +
          `world imports ${project.capabilities.join(', ')}`,
      );
    }
    return 0;
  } catch (error) {
    if (error instanceof BuildError || error instanceof world.WorldError || error?.code?.startsWith?.('E')) {
      console.error(`kasm-js: error: ${error.message}`);
      return 2;
    }
    throw error;
  }
}

process.exitCode = await main(process.argv.slice(2));
