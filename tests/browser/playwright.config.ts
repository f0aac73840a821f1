import { defineConfig } from '@playwright/test';

// One worker: the specs share one `lanyard serve` (started by global setup) and its users.
export default defineConfig({
  testDir: './specs',
  globalSetup: require.resolve('./support/global-setup'),
  workers: 1,
  fullyParallel: false,
  forbidOnly: true,
  retries: 0,
  reporter: [['list']],
  outputDir: '../../target/browser-test-results',
  use: {
    browserName: 'chromium',
    screenshot: 'only-on-failure',
    trace: 'off',
  },
  projects: [
    { name: 'desktop', use: { viewport: { width: 1280, height: 800 } } },
  ],
});
