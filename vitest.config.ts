import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['tests/**/*.test.ts'],
    setupFiles: ['runtime/polyfill.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Real libp2p nodes and llama.cpp processes share 2 cores on CI: files run one at a time
    // so that timing-sensitive tests (heartbeats, stall detection) are not starved.
    fileParallelism: false,
    reporters: ['default']
  }
})
