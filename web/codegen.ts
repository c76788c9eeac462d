// Types for every operation in src/ from the server's exported SDL (../schema/schema.graphql).
// `npm run build` runs this first, so a schema change that breaks an operation fails the build.
import type { CodegenConfig } from "@graphql-codegen/cli";

const config: CodegenConfig = {
  schema: "../schema/schema.graphql",
  documents: ["src/**/*.ts", "src/**/*.tsx", "!src/generated/**"],
  errorsOnly: true,
  generates: {
    // every schema type (the `typescript` plugin)
    "src/generated/schema.ts": {
      plugins: ["typescript"],
      config: { scalars: { JSON: "unknown" }, enumsAsTypes: true, strictScalars: true, skipTypename: true, useTypeImports: true },
    },
    // each operation's result and variables (the `typescript-operations` plugin), using the above
    "src/generated/graphql.ts": {
      plugins: ["typescript-operations"],
      config: {
        importSchemaTypesFrom: "src/generated/schema.ts",
        scalars: { JSON: "unknown" },
        enumsAsTypes: true,
        strictScalars: true,
        skipTypename: true,
        useTypeImports: true,
      },
    },
  },
};
export default config;
