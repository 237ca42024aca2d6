#!/usr/bin/env node
// The installed `clawmesh` command: the CLI is TypeScript, run through tsx's loader.
import { register } from 'tsx/esm/api'

register()
await import('./main.ts')
