import { readFileSync } from 'node:fs'

/** The software version peers announce in presence, from package.json. */
export const SOFTWARE_VERSION: string = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version
