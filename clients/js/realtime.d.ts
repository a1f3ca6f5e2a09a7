// TypeScript declarations for realtime.js (realtime-proto-client).

// dist/realtime.min.js, loaded by a plain <script> tag, puts these exports on the global
// `Realtime`.
export as namespace Realtime;

export declare const VERSION: string;

export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'disconnected' | 'failed';
export type TransportName = 'websocket' | 'sse' | 'polling';
export type ChannelState = 'pending' | 'subscribed' | 'failed' | 'unsubscribed';

export declare const STATES: readonly ConnectionState[];
export declare const TRANSPORTS: readonly TransportName[];
/** The close code of a connection the application closed (`disconnect_user`): not retried. */
export declare const DISCONNECTED_CODE: 4010;
/** The close code of a connection replaced by a newer one of the same user: not retried. */
export declare const REPLACED_CODE: 4013;

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A message as it travels on the wire (docs/protocol.md). */
export interface Message<D = any> {
  type: 'event' | 'subscribe' | 'unsubscribe' | 'error' | 'ping' | 'pong';
  id?: string;
  channel?: string | null;
  event?: string | null;
  data?: D;
  timestamp?: number;
  /** Set by the server on client events: the sender's user id. */
  user_id?: string | null;
  /** On channels with history: the message's position in the channel's stream. */
  offset?: number;
  /** On channels with history: the stream's epoch (new when history may have been lost). */
  epoch?: string;
}

export interface SubscribeOptions {
  /** On channels with history: also deliver the last `history` messages (first subscription only). */
  history?: number;
}

/** `subscription.succeeded` data; `epoch`/`offset` on channels with history. */
export interface SubscriptionSucceeded {
  epoch?: string;
  offset?: number;
  /** After a resubscription that asked for recovery: whether every missed message follows. */
  recovered?: boolean;
}

/**
 * `messages.lost` data: the server lost messages of a channel (or sent to this user,
 * when the channel is null) before they reached this client.
 */
export interface MessagesLost {
  /** How many messages were lost; null when unknown. */
  count: number | null;
  /** Channels with history, when the lost range is known: its epoch and offsets (inclusive). */
  epoch?: string;
  from?: number;
  to?: number;
}

export interface RealtimeError {
  /** Protocol error code (4001 unauthenticated, 4003 forbidden, …), or the HTTP status's. */
  code: number;
  message: string;
  /** Seconds, on 4029 rate_limited. */
  retry_after?: number;
  /** HTTP status, for refused POST /send bodies. */
  status?: number;
  [key: string]: unknown;
}

export interface Member<I = Record<string, any>> {
  user_id: string;
  info: I;
}

/** Why the connection closed or a connection attempt failed. */
export interface CloseInfo {
  /** WebSocket close code or protocol error code (4001, 4022, …); 1006 for network failures. */
  code: number;
  /** HTTP status when an HTTP request was refused. */
  status?: number;
  /** seconds of the Retry-After of a busy server's 503 or 429, when the client saw it */
  retryAfter?: number;
  reason?: string;
}

export interface ReconnectInfo extends CloseInfo {
  /** ms until the next attempt */
  delay: number;
  /** consecutive failed attempts so far */
  attempt: number;
}

export type TokenSource = string | null | undefined | (() => string | null | undefined | Promise<string | null | undefined>);

export interface RealtimeOptions {
  /** `token`: a string, or a (possibly async) function called before every connection attempt. */
  auth?: { token?: TokenSource };
  /** Shorthand for `auth.token`. */
  token?: TokenSource;
  /** The same as a function `auth.token`: also called when the server asks for a refresh. */
  getToken?: () => string | null | Promise<string | null>;
  /** Transports in order of preference; default ['websocket', 'sse', 'polling']. */
  transports?: TransportName[];
  /** A WebSocket constructor (Node: `import WebSocket from 'ws'`); default globalThis.WebSocket. */
  WebSocket?: any;
  /** A fetch implementation; default globalThis.fetch. */
  fetch?: typeof fetch;
  /** Connect at once (on the next microtask); default true. */
  autoConnect?: boolean;
  /** First backoff ceiling in ms (full jitter); default 500. */
  reconnectDelay?: number;
  /** Largest backoff ceiling in ms; default 20000. */
  maxReconnectDelay?: number;
  /** Consecutive failed attempts before 'failed'; default Infinity. */
  maxReconnectAttempts?: number;
  /** Consecutive authentication refusals (HTTP 401 / 4001) before 'failed'; default 3. */
  maxAuthFailures?: number;
  /** ms one transport has to deliver connection.established; default 10000. */
  connectTimeout?: number;
  /** A connection is dead after 2 × heartbeat + heartbeatGrace ms without data; default 5000. */
  heartbeatGrace?: number;
  /** Fixed dead-connection timeout in ms, instead of the computation above. */
  deadTimeout?: number | null;
  /** ms during which the transport that worked is tried first; default 300000. */
  transportMemory?: number;
  /** Client events kept while not connected; the oldest are dropped; default 1000. */
  maxQueueSize?: number;
  /** ms before an unanswered long-poll is abandoned and retried; default 40000. */
  pollRequestTimeout?: number;
  /** Failed polls in a row (same cursor) before the connection counts as lost; default 3. */
  pollRetries?: number;
  /** ms between poll retries, times the failure count; default 500. */
  pollRetryDelay?: number;
  /** POST /send retries on network or 5xx errors; default 2. */
  sendRetries?: number;
  /** ms between POST /send retries; default 500. */
  sendRetryDelay?: number;
  /** Send {"type":"ping"} after `heartbeat` s without receiving anything (WebSocket, SSE); default true. */
  clientPing?: boolean;
  /** Largest POST /send body in bytes of JSON (batches are split); default 32768. */
  maxBatchBytes?: number;
  /**
   * On `messages.lost` with a known range in the channel's epoch, resubscribe and replay
   * the lost messages (each offset delivered once); default true.
   */
  autoRecover?: boolean;
}

export declare const DEFAULT_OPTIONS: Readonly<Required<Omit<RealtimeOptions, 'auth' | 'token' | 'WebSocket' | 'fetch'>>>;

type Listener = (...args: any[]) => void;

declare class Emitter<Events extends Record<string, Listener>> {
  on<E extends keyof Events & string>(event: E, listener: Events[E]): this;
  on(event: string, listener: Listener): this;
  once<E extends keyof Events & string>(event: E, listener: Events[E]): this;
  once(event: string, listener: Listener): this;
  /** off() removes every listener, off(event) those of one event, off(event, fn) one. */
  off(event?: string, listener?: Listener): this;
  listenerCount(event: string): number;
}

export interface ChannelEvents {
  'subscription.succeeded': (data: SubscriptionSucceeded, message: Message) => void;
  'subscription.error': (error: RealtimeError, message: Message) => void;
  'unsubscription.succeeded': (data: Record<string, never>, message: Message) => void;
  /** Presence channels: the full member list after (re)subscribing. */
  'presence.sync': (members: Member[], message: Message) => void;
  /** Presence channels: a user's first connection joined. */
  'user.joined': (member: Member, message: Message) => void;
  /** Presence channels: a user's last connection left. */
  'user.left': (member: Member, message: Message) => void;
  /** An error about this channel after it was subscribed (e.g. 4003 on a client event). */
  error: (error: RealtimeError, message: Message) => void;
  /** The server lost messages of this channel; with `autoRecover` the channel is `recovering` if it can. */
  'messages.lost': (data: MessagesLost, message: Message) => void;
  /** Every event of the channel, the ones above included. */
  '*': (event: string, data: any, message: Message) => void;
  [event: string]: Listener;
}

export declare class Channel extends Emitter<ChannelEvents> {
  readonly client: RealtimeClient;
  readonly name: string;
  state: ChannelState;
  /** The last subscription error. */
  error: RealtimeError | null;
  /** Channels with history: the stream's epoch and the last offset seen (used for recovery). */
  epoch: string | null;
  offset: number | null;
  /** After a resubscription that asked for recovery: whether nothing was missed. */
  recovered: boolean | null;
  /** True while the channel resubscribes to replay messages reported by `messages.lost`. */
  readonly recovering: boolean;
  readonly isPrivate: boolean;
  readonly isPresence: boolean;
  readonly subscribed: boolean;
  /** Presence members, kept current. */
  readonly members: Member[];
  /** This connection's own member entry on a presence channel. */
  readonly me: Member | null;
  member(userId: string): Member | null;
  /**
   * Send a client event to the other subscribers (private- and presence- channels).
   * Returns true when sent at once, false when queued until (re)subscription.
   */
  send(event: string, data?: any): boolean;
  /** A typing signal: forwarded at most once per second per user, never stored. */
  typing(data?: Record<string, any>): boolean;
  /** Move this user's read position (an offset or a message id). */
  read(position: number | string): boolean;
  unsubscribe(): void;
}

export interface ClientEvents {
  state: (state: ConnectionState, previous: ConnectionState, info?: ReconnectInfo | CloseInfo) => void;
  connected: (info: { connectionId: string; userId: string | null; transport: TransportName }) => void;
  disconnected: (info: CloseInfo) => void;
  /** Every error message, channel errors included, and refused POST /send bodies. */
  error: (error: RealtimeError, message: Message | null) => void;
  /** Every message received. */
  message: (message: Message) => void;
  /** Queued client events dropped because the queue was full. */
  'queue.dropped': (messages: Message[]) => void;
  /** Lost messages: of a subscribed channel, or sent to this user (`channel` null). */
  'messages.lost': (channel: string | null, data: MessagesLost, message: Message) => void;
  /** Events with no channel (sent to this user or connection through the HTTP API). */
  '*': (event: string, data: any, message: Message) => void;
  [event: string]: Listener;
}

export declare class RealtimeClient extends Emitter<ClientEvents> {
  /**
   * @param url ws://, wss://, http:// or https:// URL of the server (a path prefix is kept);
   *   in browsers it defaults to the page's origin.
   */
  constructor(url?: string | URL | null, options?: RealtimeOptions);
  readonly options: Required<RealtimeOptions>;
  state: ConnectionState;
  connectionId: string | null;
  userId: string | null;
  /** Seconds, from connection.established. */
  heartbeat: number | null;
  /** The transport in use while connected. */
  transport: TransportName | null;
  readonly channels: Channel[];
  /** Client events waiting to be sent. */
  readonly queueSize: number;
  channel(name: string): Channel | null;
  subscribe(name: string, options?: SubscribeOptions): Channel;
  unsubscribe(name: string): this;
  connect(): this;
  disconnect(): this;
}

export declare class SseParser {
  constructor(onData: (data: string) => void);
  push(chunk: string): void;
}

export default RealtimeClient;
