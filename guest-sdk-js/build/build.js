// `kasm-js build`: bundle a JavaScript or TypeScript handler and make it a kasm component.
//
// A handler project is a folder with a `package.json` whose `"kasm"` object names the module
// and the capabilities, or a single `.js`/`.ts` file (its folder's `package.json`, if any,
// still supplies the capabilities). The build:
//   1. generates the narrow world for the declared capabilities (world.js);
//   2. bundles the handler, its npm dependencies and this SDK into one ES module with esbuild,
//      replacing the SDK's capability seam (`#kasm-capabilities`) by a module that imports
//      exactly the declared interfaces;
//   3. runs componentize-js (StarlingMonkey) on the bundle, against the narrow world;
//   4. appends a `kasm:guest` custom section saying what made the component.
//
// `"kasm"` keys: `main` (the module that calls `handler(...)`; default handler.js, handler.ts,
// index.js or index.ts), `capabilities` (out of producer, kv, sql, websocket; settings and log
// are always in), `name` (the component's file name without `.wasm`; default the package's
// name without its scope). Command-line flags override the object.

import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, rm, writeFile, rename, appendFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, extname, join, resolve as resolvePath } from 'node:path';

import { INTERFACES } from '../src/capabilities.js';
import * as world from './world.js';

/** The componentize-js this SDK is built and tested with (its pinned dependency). */
export const COMPONENTIZE_JS = '0.23.0';
/** The esbuild that bundles handlers (its pinned dependency). */
export const ESBUILD = '0.28.2';
/** The custom section appended to every component this SDK builds. */
export const GUEST_SECTION = 'kasm:guest';
/** This SDK's version, as the guest section records it. */
export const SDK_VERSION = JSON.parse(
  readFileSync(new URL('../package.json', import.meta.url), 'utf8'),
).version;

/** The capabilities a JavaScript handler may declare (`http` is not offered yet). */
export const JS_CAPABILITIES = world.CAPABILITIES.filter((c) => c !== 'http');

const MAINS = ['handler.js', 'handler.ts', 'index.js', 'index.ts'];
const SOURCE = /\.(js|mjs|ts|mts)$/;

/** The handler cannot be built; the message says why and what to change. */
export class BuildError extends Error {
  constructor(message) {
    super(message);
    this.name = 'BuildError';
  }
}

/**
 * The project for `source` (a source file or a folder): `{ root, main, name, capabilities }`,
 * flags over `package.json`'s `"kasm"`.
 */
export function resolveProject(source, flags = {}) {
  const path = resolvePath(source);
  if (!existsSync(path)) throw new BuildError(`${source}: no such file or folder`);
  const isFile = statSync(path).isFile();
  if (isFile && !SOURCE.test(path)) {
    throw new BuildError(`${path}: a handler source is a .js or .ts file, or a project folder`);
  }
  const root = isFile ? dirname(path) : path;
  const { table, packageName, file } = readConfig(root);
  if (table.main !== undefined && typeof table.main !== 'string') {
    throw new BuildError(`${file}: "kasm": { "main" } must be a string`);
  }
  let main;
  if (flags.main) main = resolvePath(flags.main);
  else if (isFile) main = path;
  else if (table.main) main = join(root, table.main);
  else {
    const found = MAINS.find((m) => existsSync(join(root, m)));
    if (found === undefined) {
      throw new BuildError(`${root}: no handler module found (${MAINS.join(', ')}, or "kasm": { "main" } in package.json)`);
    }
    main = join(root, found);
  }
  if (!existsSync(main)) throw new BuildError(`${main}: the handler module does not exist`);
  let declared = flags.capabilities;
  if (declared === undefined) {
    declared = table.capabilities ?? [];
    if (!Array.isArray(declared) || !declared.every((c) => typeof c === 'string')) {
      throw new BuildError(`${file}: "kasm": { "capabilities" } must be a list of names`);
    }
  }
  if (declared.includes('http')) {
    throw new BuildError(
      'the JavaScript SDK does not offer `http` yet (fetch() needs an asynchronous handler); ' +
        `declare only ${JS_CAPABILITIES.filter((c) => !world.ALWAYS.includes(c)).join(', ')}`,
    );
  }
  let capabilities;
  try {
    capabilities = world.normalize(declared);
  } catch (error) {
    throw new BuildError(error.message);
  }
  const fallback = isFile ? basename(path, extname(path)) : basename(root);
  const name = flags.name || table.name || (packageName ? packageName.replace(/^@[^/]+\//, '') : fallback);
  return { root, main, name: String(name), capabilities };
}

function readConfig(root) {
  const file = join(root, 'package.json');
  if (!existsSync(file)) return { table: {}, packageName: undefined, file };
  let data;
  try {
    data = JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    throw new BuildError(`${file}: ${error.message}`);
  }
  const table = data.kasm ?? {};
  if (table === null || typeof table !== 'object' || Array.isArray(table)) {
    throw new BuildError(`${file}: "kasm" must be an object`);
  }
  const unknown = Object.keys(table).filter((k) => !['main', 'capabilities', 'name'].includes(k)).sort();
  if (unknown.length > 0) {
    throw new BuildError(`${file}: unknown key(s) in "kasm": ${unknown.join(', ')} (known: main, capabilities, name)`);
  }
  return { table, packageName: data.name, file };
}

/** The module that replaces the SDK's capability seam: the declared interfaces, imported. */
export function capabilitiesModule(capabilities, standIns) {
  const lines = [
    '// Generated by kasm-js build: the interfaces this component imports, and throwing',
    '// stand-ins for the ones its handler did not declare.',
    `import { unreachable } from ${JSON.stringify(standIns)};`,
  ];
  const [pkg, version] = world.PACKAGE.split('@');
  for (const name of Object.keys(INTERFACES)) {
    if (capabilities.includes(name)) {
      lines.push(`export * as ${name} from '${pkg}/${name}@${version}';`);
    } else {
      const why = `the component was built without \`${name}\`: add it to the handler's capabilities`;
      lines.push(`export const ${name} = unreachable(${JSON.stringify(name)}, ${JSON.stringify(why)});`);
    }
  }
  return `${lines.join('\n')}\n`;
}

/** The bundle's entry: the author's module (it registers the handler), then the export. */
export function entrySource(main) {
  return [
    '// Generated by kasm-js build: the module componentize-js wraps.',
    `import ${JSON.stringify(main)};`,
    "import { call, registeredHandler } from 'kasm-guest/component';",
    '',
    'if (registeredHandler() === undefined) {',
    `  throw new Error(${JSON.stringify(`${main} registers no handler: pass the handler function to handler() from kasm-guest`)});`,
    '}',
    '',
    '/** The world\'s `handle` export. */',
    'export function handle(e) {',
    '  call(e);',
    '}',
    '',
  ].join('\n');
}

/** Bundle the project into one ES module (a string), the SDK's seam replaced. */
export async function bundle(project) {
  const esbuild = await import('esbuild');
  const seam = {
    name: 'kasm',
    setup(build) {
      build.onResolve({ filter: /^#kasm-capabilities$/ }, (args) => ({
        path: 'capabilities',
        namespace: 'kasm',
        pluginData: { standIns: join(dirname(args.importer), 'capabilities.js') },
      }));
      build.onLoad({ filter: /.*/, namespace: 'kasm' }, (args) => ({
        contents: capabilitiesModule(project.capabilities, args.pluginData.standIns),
        loader: 'js',
        resolveDir: dirname(args.pluginData.standIns),
      }));
      build.onResolve({ filter: /^(kasm|wasi):/ }, (args) => ({ path: args.path, external: true }));
    },
  };
  let result;
  try {
    result = await esbuild.build({
      stdin: { contents: entrySource(project.main), resolveDir: project.root, sourcefile: 'kasm-entry.js', loader: 'js' },
      bundle: true,
      format: 'esm',
      platform: 'neutral',
      mainFields: ['module', 'main'],
      conditions: ['kasm'],
      target: 'es2022',
      write: false,
      logLevel: 'silent',
      plugins: [seam],
    });
  } catch (error) {
    const messages = (error.errors ?? []).map((e) => {
      const at = e.location ? `${e.location.file}:${e.location.line}:${e.location.column}: ` : '';
      return `${at}${e.text}`;
    });
    throw new BuildError(`bundling ${project.main} failed:\n  ${messages.join('\n  ') || error.message}`);
  }
  return result.outputFiles[0].text;
}

/** Build `project` into `output`; returns the seconds componentize-js took. */
export async function build(project, output, options = {}) {
  const wit = options.wit ?? world.shippedWit();
  output = resolvePath(output);
  await mkdir(dirname(output), { recursive: true });
  const tmp = await mkdtemp(join(tmpdir(), 'kasm-js-'));
  const partial = `${output}.partial`;
  try {
    const witFolder = world.write(wit, project.capabilities, tmp);
    const source = join(tmp, 'bundle.js');
    await writeFile(source, await bundle(project));
    const { componentize } = await import('@bytecodealliance/componentize-js');
    const started = performance.now();
    let component;
    try {
      ({ component } = await componentize({
        sourcePath: source,
        witPath: witFolder,
        worldName: world.WORLD,
        // No fetch(): the HTTP feature would import wasi:http, which a handler is not granted.
        disableFeatures: ['http', 'fetch-event'],
      }));
    } catch (error) {
      throw new BuildError(`componentize-js failed: ${error.message ?? error}`);
    }
    const took = (performance.now() - started) / 1000;
    await writeFile(partial, component);
    await appendFile(partial, guestSection(project));
    await rename(partial, output);
    return took;
  } finally {
    await rm(tmp, { recursive: true, force: true });
    await rm(partial, { force: true });
  }
}

/**
 * The `kasm:guest` custom section for `project`, encoded. A custom section may appear
 * between any two sections of a component, so appending one leaves the component valid and
 * its behaviour unchanged.
 */
export function guestSection(project) {
  const payload = Buffer.from(
    JSON.stringify({
      language: 'javascript',
      sdk: `kasm-guest ${SDK_VERSION}`,
      toolchain: `componentize-js ${COMPONENTIZE_JS}`,
      capabilities: project.capabilities,
    }),
  );
  const name = Buffer.from(GUEST_SECTION);
  const body = Buffer.concat([leb128(name.length), name, payload]);
  return Buffer.concat([Buffer.from([0]), leb128(body.length), body]);
}

function leb128(n) {
  const out = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return Buffer.from(out);
}
