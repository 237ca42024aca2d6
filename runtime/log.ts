export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent'
const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 }

export interface Logger {
  debug (msg: string, fields?: Record<string, unknown>): void
  info (msg: string, fields?: Record<string, unknown>): void
  warn (msg: string, fields?: Record<string, unknown>): void
  error (msg: string, fields?: Record<string, unknown>): void
  child (scope: string): Logger
}

/**
 * One readable line per event (time, agent, scope, message, key=value fields) on stderr, so that stdout
 * stays clean for --json output. A structured logger with a pretty-printer would need a worker thread
 * per process; this is all an owner reading a terminal needs.
 */
export function createLogger (name: string, level: LogLevel = 'info', sink: (line: string) => void = (l) => process.stderr.write(l + '\n')): Logger {
  const make = (scope: string): Logger => {
    const emit = (lvl: LogLevel, msg: string, fields?: Record<string, unknown>): void => {
      if (RANK[lvl] < RANK[level]) return
      const time = new Date().toISOString().slice(11, 23)
      const extra = fields === undefined
        ? ''
        : ' ' + Object.entries(fields).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' ')
      sink(`${time} ${lvl.toUpperCase().padEnd(5)} ${name}${scope === '' ? '' : '/' + scope} ${msg}${extra}`)
    }
    return {
      debug: (m, f) => emit('debug', m, f),
      info: (m, f) => emit('info', m, f),
      warn: (m, f) => emit('warn', m, f),
      error: (m, f) => emit('error', m, f),
      child: (s) => make(scope === '' ? s : `${scope}/${s}`)
    }
  }
  return make('')
}
