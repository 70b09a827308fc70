import './globals.css';

export const metadata = {
  title: 'QAI workspace',
  description: 'Next.js starter for QAI workspaces',
};

export default function RootLayout({ children }) {
  return (
    <html lang="en">
      <body>{children}</body>
    </html>
  );
}
