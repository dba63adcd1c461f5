/**
 * The server SDK: `registerService()` (register, reverse tunnel with reconnect, heartbeats,
 * events), `gate()` for TCP servers, and BrokerClient for the rest.
 */
export { BrokerClient } from '../client/broker-client.js';
export { gate, type GateOptions, type GatedHandler } from './gate.js';
export {
  registerService,
  BrokerService,
  type RegisterServiceOptions,
  type ServiceState,
} from './service.js';
export {
  httpGate,
  HttpGate,
  SESSION_COOKIE,
  type GateIdentity,
  type HttpGateOptions,
  type GatedRequest,
} from './http-gate.js';
export { KeyWatch, KEY_RECHECK_MS, type KeyWatchOptions, type LiveKeys } from './key-watch.js';
export { newLocalKey, csrFor, type LocalKey } from './csr.js';
export { listenOnLoopback, loopbackTwin } from './loopback.js';
export { MAX_KEY_LINE_BYTES, KEY_LINE_TIMEOUT_MS } from '../protocol/constants.js';
