export * from './errors.js';
export * from './names.js';
export * from './tokens.js';
export * from './types.js';
export * from './constants.js';
export * from './splice.js';
export * from './text.js';
