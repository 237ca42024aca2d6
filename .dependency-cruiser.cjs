/**
 * The layering, checked by `npm run lint:layers` (and .ci/run before the tests). Imports flow one way:
 *
 *   protocols <- runtime <- governance <- skills <- agents <- sims
 *
 * A layer imports its own folder and the layers left of it, never one to its right; tests import
 * anything. No import cycles, and no dynamic import() of a project file (it hides an edge from this
 * check), except the known exceptions listed under `noDynamicImport` below.
 */
const LAYERS = ['protocols', 'runtime', 'governance', 'skills', 'agents', 'sims']

/** One rule per layer: nothing in it may import the layers above it. */
const upward = LAYERS.slice(0, -1).map((layer, i) => ({
  name: `no-${layer}-upward`,
  comment: `${layer}/ is below ${LAYERS.slice(i + 1).join(', ')}: it must not import them`,
  severity: 'error',
  from: { path: `^${layer}/` },
  to: { path: `^(${LAYERS.slice(i + 1).join('|')})/` }
}))

/**
 * Known exceptions to "no dynamic import of a project file", each for a reason a static import cannot
 * serve. Keep this list short; the layer rules above still apply to these imports.
 */
const noDynamicImport = [
  // The installed `clawmesh` command is plain JS: it registers tsx's loader, and only then can it load
  // the TypeScript CLI. A static import would be resolved before the loader exists.
  '^runtime/cli/bin\\.js$',
  // CLI wiring: each command's module (libp2p, sqlite, LangChain, octokit behind it) loads when that
  // command runs, so that `clawmesh --help`, a typo or `clawmesh stop` answer at once. The commands
  // themselves live in ordinary modules that are imported statically from there on.
  '^runtime/cli/(main|keys)\\.ts$',
  '^(agents/extension|governance/cli-extension|sims/cli-extension)\\.ts$'
  // (runtime/cli/extension.ts imports the modules package.json lists under clawmesh.extensions by a
  // computed path: that is how the layers above the runtime add to its CLI without the runtime
  // importing them; the analysis cannot see such an import, so it needs no entry here.)
]

module.exports = {
  forbidden: [
    ...upward,
    {
      name: 'no-circular',
      comment: 'an import cycle (type-only imports count: they couple the modules all the same)',
      severity: 'error',
      from: { path: `^(${LAYERS.join('|')})/` },
      to: { circular: true }
    },
    {
      name: 'no-dynamic-project-import',
      comment: 'a dynamic import() of a project file hides an edge from this check; import it statically (known exceptions in .dependency-cruiser.cjs)',
      severity: 'error',
      from: { path: `^(${LAYERS.join('|')})/`, pathNot: noDynamicImport },
      to: { dynamic: true, path: `^(${LAYERS.join('|')})/` }
    },
    {
      name: 'no-unresolvable',
      comment: 'an import that resolves to nothing',
      severity: 'error',
      from: { path: `^(${LAYERS.join('|')}|tests)/` },
      to: { couldNotResolve: true }
    }
  ],
  options: {
    // Every file the project owns; node_modules is only a target, never walked.
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(node_modules|sims/out|test-output)/' },
    // `import type` is an edge too: a type-only cycle still ties two modules together.
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    moduleSystems: ['es6', 'cjs'],
    // ESM-only packages (libp2p, LangChain, octokit) are found through their package.json "exports".
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      mainFields: ['module', 'main', 'types']
    },
    reporterOptions: { text: { highlightFocused: true } }
  }
}
