// Stand-in for ComfyUI_frontend's extension shim at /scripts/api.js.
export const api = window.comfyAPI.api.api;
