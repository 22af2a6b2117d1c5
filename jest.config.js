// Four tiers (DESIGN.md §11). Each can run alone: `npx jest --selectProjects kernel`.
const { pathsToModuleNameMapper } = require('ts-jest');
const { compilerOptions } = require('./tsconfig.json');

const base = {
  rootDir: __dirname,
  testEnvironment: 'node',
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: '<rootDir>/tsconfig.json' }] },
  moduleFileExtensions: ['ts', 'js', 'json'],
  moduleNameMapper: pathsToModuleNameMapper(compilerOptions.paths, { prefix: '<rootDir>/' }),
  testPathIgnorePatterns: ['/node_modules/', '/dist/'],
};

module.exports = {
  projects: [
    { ...base, displayName: 'unit', testMatch: ['<rootDir>/{apps,libs,test,bench}/**/*.spec.ts'] },
    {
      ...base,
      displayName: 'integration',
      testMatch: ['<rootDir>/{apps,libs,test}/**/*.integration-spec.ts'],
      globalSetup: '<rootDir>/test/support/integration-setup.ts',
    },
    { ...base, displayName: 'kernel', testMatch: ['<rootDir>/{apps,libs,test}/**/*.kernel-spec.ts'] },
    {
      ...base,
      displayName: 'e2e',
      testMatch: ['<rootDir>/{apps,libs,test}/**/*.e2e-spec.ts'],
      globalSetup: '<rootDir>/test/support/integration-setup.ts',
    },
  ],
};
