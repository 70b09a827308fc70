import Counter from './counter';

export default function Home() {
  return (
    <main>
      <img src="/logo.svg" alt="" width={48} height={48} />
      <h1 data-testid="heading">QAI workspace</h1>
      <p data-testid="intro">Edit app/page.js and save to see your changes.</p>
      <Counter />
    </main>
  );
}
