/**
 * The server SDK: the broker calls a server needs (register, ready, heartbeat, verify, unregister)
 * through BrokerClient, and `gate()` for TCP servers. The HTTPS middleware and the tunnel keeper
 * come with the HTTPS and gateway issues.
 */
export { BrokerClient } from '../client/broker-client.js';
export { gate, type GateOptions, type GatedHandler } from './gate.js';
export { MAX_KEY_LINE_BYTES, KEY_LINE_TIMEOUT_MS } from '../protocol/constants.js';
