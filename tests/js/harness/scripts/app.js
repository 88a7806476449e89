// Stand-in for ComfyUI_frontend's extension shim at /scripts/app.js (it re-exports window.comfyAPI).
export const app = window.comfyAPI.app.app;
