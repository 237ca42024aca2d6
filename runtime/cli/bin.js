#!/usr/bin/env node
// The installed `clawmesh` command: the CLI is TypeScript, run through tsx's loader.
import { register } from 'tsx/esm/api'

// An invite given as an argument carries the private-mesh key: take it off this process's command line
// (/proc/<pid>/cmdline, ps) before the TypeScript loads. main.ts does the same when run without this file.
if (process.argv.some((a) => a.includes('clawmesh-invite:'))) process.title = 'clawmesh join'

register()
await import('./main.ts')
