// Compiled with `tsc --strict --noEmit` against the packed `ackline` package's
// types: proof that the README example type-checks and that listeners are typed.
import init, { Ackline, type Message, type MessageUpdate, type SendResult } from 'ackline';

export async function example(token: string): Promise<void> {
  await init();
  const client = await Ackline.open({ url: 'https://chat.example', token, dbName: 'ackline-ann' });
  client.on('status', (s) => console.log(s.state, s.outbox, s.lastError?.code));
  const room = await client.conversation('lobby');
  room.on('message', (m: Message) => console.log(m.seq, m.user, m.body, m.mine));
  room.on('update', (u: MessageUpdate) => console.log(u.id, u.status, u.seq));
  room.on('pending', (p) => console.log(p.id, p.body));
  const sent: SendResult = await room.send('hello');
  const older: Message[] = await room.history({ before: sent.seq, limit: 20 });
  console.log(older.length, room.outboxSize, room.pending().length);
  client.setOnline(false);
  client.close();
}

// Callback tokens are allowed too.
export const withCallback = () => Ackline.open({ url: 'https://chat.example', token: async () => 'jwt' });

// @ts-expect-error: event names are checked
export const wrongEvent = (room: import('ackline').Conversation) => room.on('messages', () => {});
// @ts-expect-error: listener payloads are typed (seq is a number)
export const wrongPayload = (room: import('ackline').Conversation) => room.on('message', (m: { seq: string }) => m);
