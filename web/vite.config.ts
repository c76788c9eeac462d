import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// `npm run dev` proxies the API to a local maosic-server (MAOSIC_URL, default :8080).
const target = process.env.MAOSIC_URL ?? "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [react()],
  build: { outDir: "dist", sourcemap: false, chunkSizeWarningLimit: 400 },
  server: {
    proxy: {
      "/graphql/ws": { target, ws: true },
      "/graphql": { target },
      "/api": { target },
    },
  },
});
